package console

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets
var assetFS embed.FS

// assetHandler serves the embedded CSS and icons under /assets/.
func assetHandler() http.Handler {
	sub, err := fs.Sub(assetFS, "assets")
	if err != nil {
		panic(err)
	}
	files := http.FileServerFS(sub)
	return http.StripPrefix("/assets", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		files.ServeHTTP(w, r)
	}))
}

// page is what every template gets.
type page struct {
	Title   string
	Nav     string // the active navigation entry
	Session *sessionCtx
	Flash   string
	Data    any
}

var templates = parseTemplates()

func parseTemplates() map[string]*template.Template {
	funcs := template.FuncMap{
		"ts":       formatTime,
		"ago":      ago,
		"dur":      formatDuration,
		"stateCls": stateClass,
		"preview":  preview,
		"join":     strings.Join,
		"deref":    func(t *time.Time) time.Time { return *t },
	}
	layout := template.Must(template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html"))
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		panic(err)
	}
	out := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		out[name] = template.Must(template.Must(layout.Clone()).ParseFS(templateFS, n))
	}
	return out
}

// render writes template name inside the layout.
func (s *server) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	var buf bytes.Buffer
	if err := templates[name].ExecuteTemplate(&buf, "layout.html", p); err != nil {
		s.log.Error("console: render", "template", name, "error", err)
		http.Error(w, "the console could not render this page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

type messageView struct {
	Heading, Message string
}

// errorPage answers status with a page saying what went wrong.
func (s *server) errorPage(w http.ResponseWriter, r *http.Request, status int, heading, message string) {
	s.render(w, r, status, "message", page{Title: heading, Data: messageView{heading, message}})
}

// serverError logs err and answers 500 without echoing it.
func (s *server) serverError(w http.ResponseWriter, r *http.Request, err error) {
	s.log.Error("console", "path", r.URL.Path, "error", err)
	s.errorPage(w, r, http.StatusInternalServerError, "Something went wrong",
		"The console could not complete this. It has been logged; try again in a moment.")
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05.000 UTC")
}

// ago says how long before now t was, coarsely.
func ago(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return formatDuration(time.Since(t)) + " ago"
}

// formatDuration writes d at a precision a person reads at a glance.
func formatDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0 ms"
	case d < time.Second:
		return fmt.Sprintf("%d ms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%d min %d s", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h %d min", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

// stateClass is the badge class of a request, webhook or delivery state.
func stateClass(state any) string {
	switch fmt.Sprint(state) {
	case "SUCCEEDED":
		return "ok"
	case "FAILED", "WEBHOOK_FAILED", "EXPIRED":
		return "bad"
	case "IN_PROGRESS", "RETRY":
		return "run"
	case "QUEUED", "PENDING":
		return "wait"
	}
	return "mute"
}

// previewLimit is how much of an input or output the timeline shows.
const previewLimit = 4 << 10

// preview is the start of b as text, for display: at most previewLimit
// bytes, cut at a character boundary, invalid UTF-8 replaced. The template
// escapes it.
func preview(b []byte) string {
	s := b
	cut := false
	if len(s) > previewLimit {
		s, cut = s[:previewLimit], true
		// Drop a character cut in two rather than show it as U+FFFD.
		for i := len(s) - 1; i >= 0 && i >= len(s)-utf8.UTFMax; i-- {
			if utf8.RuneStart(s[i]) {
				if !utf8.FullRune(s[i:]) {
					s = s[:i]
				}
				break
			}
		}
	}
	out := strings.ToValidUTF8(string(s), "\uFFFD")
	if cut {
		out += fmt.Sprintf("\n… (%d of %d bytes shown)", len(s), len(b))
	}
	return out
}
