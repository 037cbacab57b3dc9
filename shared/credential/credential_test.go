package credential

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func mustKeys(t *testing.T, list ...string) *Keyring {
	t.Helper()
	k, err := ParseKeys(strings.Join(list, ","))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpen(t *testing.T) {
	t.Parallel()
	const secret = "Bearer sk-upstream-0123456789"
	oldKey, newKey, otherKey := NewKey(), NewKey(), NewKey()

	t.Run("RoundTrip", func(t *testing.T) {
		t.Parallel()
		k := mustKeys(t, newKey)
		sealed, err := k.Seal(secret, "dep-1")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(sealed, Version+":") || strings.Count(sealed, ":") != 2 || !IsSealed(sealed) {
			t.Errorf("sealed form %q, want v1:<key id>:<payload>", sealed)
		}
		if strings.Contains(sealed, secret) || strings.Contains(sealed, base64.RawURLEncoding.EncodeToString([]byte(secret))) {
			t.Errorf("sealed %q shows the credential", sealed)
		}
		again, _ := k.Seal(secret, "dep-1")
		if again == sealed {
			t.Error("two seals of one credential are equal: the nonce is not fresh")
		}
		got, err := k.Open(sealed, "dep-1")
		if err != nil || got != secret {
			t.Fatalf("Open = %q, %v", got, err)
		}
	})
	t.Run("NoCredential", func(t *testing.T) {
		t.Parallel()
		var none *Keyring
		if s, err := none.Seal("", "d"); s != "" || err != nil {
			t.Errorf("Seal(\"\") = %q, %v", s, err)
		}
		if s, err := none.Open("", "d"); s != "" || err != nil {
			t.Errorf("Open(\"\") = %q, %v", s, err)
		}
	})
	t.Run("NoKey", func(t *testing.T) {
		t.Parallel()
		var none *Keyring
		if _, err := none.Seal(secret, "d"); !errors.Is(err, ErrNoKey) {
			t.Errorf("Seal without a key: %v, want ErrNoKey", err)
		}
		sealed, _ := mustKeys(t, newKey).Seal(secret, "d")
		if _, err := none.Open(sealed, "d"); !errors.Is(err, ErrNoKey) {
			t.Errorf("Open without a key: %v, want ErrNoKey", err)
		}
	})
	t.Run("WrongKey", func(t *testing.T) {
		t.Parallel()
		sealed, _ := mustKeys(t, newKey).Seal(secret, "d")
		if _, err := mustKeys(t, otherKey).Open(sealed, "d"); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("Open under another key: %v, want ErrUnknownKey", err)
		}
		// The other key claiming the sealing key's id still does not open it.
		_, payload, _ := strings.Cut(strings.TrimPrefix(sealed, Version+":"), ":")
		other := mustKeys(t, otherKey)
		forged := Version + ":" + other.keys[0].id + ":" + payload
		if _, err := other.Open(forged, "d"); !errors.Is(err, ErrInvalid) {
			t.Errorf("Open with a forged key id: %v, want ErrInvalid", err)
		}
	})
	t.Run("OtherDeployment", func(t *testing.T) {
		t.Parallel()
		k := mustKeys(t, newKey)
		sealed, _ := k.Seal(secret, "dep-1")
		if _, err := k.Open(sealed, "dep-2"); !errors.Is(err, ErrInvalid) {
			t.Errorf("Open for another deployment: %v, want ErrInvalid", err)
		}
	})
	t.Run("Tampering", func(t *testing.T) {
		t.Parallel()
		k := mustKeys(t, newKey)
		sealed, _ := k.Seal(secret, "d")
		head := len(sealed) - len(sealed[strings.LastIndex(sealed, ":")+1:])
		raw, _ := base64.RawURLEncoding.DecodeString(sealed[head:])
		for i := range raw {
			b := append([]byte(nil), raw...)
			b[i] ^= 0x01
			if got, err := k.Open(sealed[:head]+base64.RawURLEncoding.EncodeToString(b), "d"); !errors.Is(err, ErrInvalid) {
				t.Fatalf("byte %d flipped: Open = %q, %v; want ErrInvalid", i, got, err)
			}
		}
		for name, s := range map[string]string{
			"Truncated":  sealed[:head+10],
			"Empty":      sealed[:head],
			"NotBase64":  sealed[:head] + "!!!!",
			"Extended":   sealed + "AAAA",
			"OtherVer":   "v2" + sealed[2:],
			"PlainText":  secret,
			"NoPayload":  Version + ":abcd",
			"OnlyPrefix": Version + ":",
		} {
			if got, err := k.Open(s, "d"); err == nil {
				t.Errorf("%s: Open(%q) = %q, want an error", name, s, got)
			}
		}
	})
	t.Run("Rotation", func(t *testing.T) {
		t.Parallel()
		before := mustKeys(t, oldKey)
		sealedOld, _ := before.Seal(secret, "d")
		after := mustKeys(t, newKey, oldKey)
		if got, err := after.Open(sealedOld, "d"); err != nil || got != secret {
			t.Fatalf("the new keyring opens the old seal: %q, %v", got, err)
		}
		if after.Current(sealedOld) || !before.Current(sealedOld) {
			t.Error("Current: a seal under the old key is current only for the old keyring")
		}
		resealed, _ := after.Seal(secret, "d")
		if !after.Current(resealed) {
			t.Error("a new seal is not under the first key")
		}
		if _, err := before.Open(resealed, "d"); !errors.Is(err, ErrUnknownKey) {
			t.Errorf("the old keyring opens a seal under the new key: %v", err)
		}
		if got, err := mustKeys(t, newKey).Open(resealed, "d"); err != nil || got != secret {
			t.Errorf("after dropping the old key: %q, %v", got, err)
		}
	})
}

func TestParseKeys(t *testing.T) {
	t.Parallel()
	good := NewKey()
	if k, err := ParseKeys(""); k != nil || err != nil {
		t.Errorf("ParseKeys(\"\") = %v, %v; want nil, nil", k, err)
	}
	raw, _ := base64.StdEncoding.DecodeString(good)
	for _, list := range []string{good, " " + good + " ", base64.RawURLEncoding.EncodeToString(raw), good + "," + NewKey()} {
		if _, err := ParseKeys(list); err != nil {
			t.Errorf("ParseKeys(%q): %v", list, err)
		}
	}
	short := base64.StdEncoding.EncodeToString([]byte("sixteen byte key"))
	for _, list := range []string{short, "not base64!", good + ",", good + "," + good, "," + good} {
		_, err := ParseKeys(list)
		if err == nil {
			t.Errorf("ParseKeys(%q) accepted", list)
			continue
		}
		if strings.Contains(err.Error(), good) || strings.Contains(err.Error(), short) {
			t.Errorf("the error shows a key: %v", err)
		}
	}
}
