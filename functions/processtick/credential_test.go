package processtick_test

import (
	"strings"
	"testing"

	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/shared/postgres"
)

// TestCredentialNotDecrypted: a processor that cannot decrypt a
// deployment's credential (no key configured) does not call the model, and
// the attempt fails saying why without showing the stored value.
func TestCredentialNotDecrypted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	m := newModel(t, answer(200, `{}`))
	d := b.deploy(m.URL, deployOptions{MaxConcurrency: 1, Credential: "s3cret"})
	id := b.submit(d, `{}`, func(p *postgres.RequestInsertParams) { p.MaxAttempts = 1 })
	noKeys := *b.db
	noKeys.Credentials = nil
	b.run(b.processor(func(o *processtick.Options) { o.DB = &noKeys }))
	r := b.waitState(id, postgres.StateFailed)
	if m.callCount() != 0 {
		t.Errorf("the model was called %d times", m.callCount())
	}
	if len(r.Errors) != 1 || r.Errors[0].Code != postgres.CodeInternalServerError ||
		!strings.Contains(r.Errors[0].Message, "credential") || strings.Contains(r.Errors[0].Message, "v1:") {
		t.Errorf("errors %+v, want one INTERNAL_SERVER_ERROR about the credential", r.Errors)
	}
}
