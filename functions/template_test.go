package functions_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/openasync/asyncrequest/shared/httpapi"
)

// templateFunction is the template.yaml resource of each function of the
// route table.
var templateFunction = map[httpapi.Function]string{
	httpapi.FunctionSubmit: "SubmitFunction",
	httpapi.FunctionStatus: "StatusFunction",
}

var functionNames = []string{"SubmitFunction", "StatusFunction", "ProcessTickFunction", "DeliverWebhookFunction"}

// samTemplate is the part of template.yaml the tests look at.
type samTemplate struct {
	Transform  string
	Parameters map[string]map[string]any
	Globals    struct{ Function samFunction }
	Resources  map[string]struct {
		Type       string
		Metadata   map[string]any
		Properties samFunction
	}
	Outputs map[string]any
}

type samFunction struct {
	Runtime       string
	Handler       string
	CodeUri       string
	Architectures []string
	Timeout       any
	Environment   struct{ Variables map[string]any }
	Events        map[string]struct {
		Type       string
		Properties map[string]any
	}
}

// loadTemplate reads ../template.yaml. CloudFormation tags such as !Ref and
// !Sub are dropped, keeping what they tag: !Ref HttpApi reads as "HttpApi".
func loadTemplate(t *testing.T) samTemplate {
	t.Helper()
	b, err := os.ReadFile("../template.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("parse template.yaml: %v", err)
	}
	plain, err := untag(&doc)
	if err != nil {
		t.Fatalf("read template.yaml: %v", err)
	}
	j, err := json.Marshal(plain)
	if err != nil {
		t.Fatal(err)
	}
	var tmpl samTemplate
	if err := json.Unmarshal(j, &tmpl); err != nil {
		t.Fatalf("decode template.yaml: %v", err)
	}
	return tmpl
}

// untag turns a YAML node into plain Go values, ignoring custom tags.
func untag(n *yaml.Node) (any, error) {
	switch n.Kind {
	case yaml.DocumentNode:
		return untag(n.Content[0])
	case yaml.AliasNode:
		return untag(n.Alias)
	case yaml.SequenceNode:
		s := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			v, err := untag(c)
			if err != nil {
				return nil, err
			}
			s = append(s, v)
		}
		return s, nil
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			v, err := untag(n.Content[i+1])
			if err != nil {
				return nil, err
			}
			m[n.Content[i].Value] = v
		}
		return m, nil
	case yaml.ScalarNode:
		if strings.HasPrefix(n.Tag, "!") && !strings.HasPrefix(n.Tag, "!!") {
			return n.Value, nil
		}
		var v any
		if err := n.Decode(&v); err != nil {
			return nil, fmt.Errorf("line %d: %w", n.Line, err)
		}
		return v, nil
	}
	return nil, fmt.Errorf("line %d: unexpected YAML node kind %v", n.Line, n.Kind)
}

func TestTemplateFunctions(t *testing.T) {
	t.Parallel()

	tmpl := loadTemplate(t)
	if tmpl.Transform != "AWS::Serverless-2016-10-31" {
		t.Errorf("Transform %q, want AWS::Serverless-2016-10-31", tmpl.Transform)
	}
	global := tmpl.Globals.Function
	for _, name := range functionNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()

			res, ok := tmpl.Resources[name]
			if !ok || res.Type != "AWS::Serverless::Function" {
				t.Fatalf("no AWS::Serverless::Function %s (got type %q)", name, res.Type)
			}
			if got := res.Metadata["BuildMethod"]; got != "makefile" {
				t.Errorf("Metadata.BuildMethod %v, want makefile", got)
			}
			fn := res.Properties
			for _, p := range []struct{ name, got, want string }{
				{"Runtime", firstSet(fn.Runtime, global.Runtime), "provided.al2023"},
				{"Handler", firstSet(fn.Handler, global.Handler), "bootstrap"},
				{"CodeUri", firstSet(fn.CodeUri, global.CodeUri), "."},
				{"Architectures", strings.Join(firstSet(fn.Architectures, global.Architectures), ","), "arm64"},
			} {
				if p.got != p.want {
					t.Errorf("%s %q, want %q", p.name, p.got, p.want)
				}
			}
		})
	}
}

func TestTemplateEnvironment(t *testing.T) {
	t.Parallel()

	tmpl := loadTemplate(t)
	vars := tmpl.Globals.Function.Environment.Variables
	if vars["DATABASE_URL"] != "DatabaseUrl" {
		t.Errorf("Globals DATABASE_URL %v, want !Ref DatabaseUrl", vars["DATABASE_URL"])
	}
	if vars["LOG_FORMAT"] != "json" {
		t.Errorf("Globals LOG_FORMAT %v, want json", vars["LOG_FORMAT"])
	}
	if tmpl.Parameters["DatabaseUrl"]["NoEcho"] != true {
		t.Error("parameter DatabaseUrl is not NoEcho")
	}
	if api := tmpl.Resources["HttpApi"]; api.Type != "AWS::Serverless::HttpApi" {
		t.Errorf("HttpApi has type %q, want AWS::Serverless::HttpApi", api.Type)
	}
	if _, ok := tmpl.Outputs["ApiUrl"]; !ok {
		t.Error("no ApiUrl output")
	}
}

func TestTemplateRoutes(t *testing.T) {
	t.Parallel()

	tmpl := loadTemplate(t)

	// owner maps each "METHOD /path" route in the template to its function.
	owner := map[string]string{}
	for name, res := range tmpl.Resources {
		for event, e := range res.Properties.Events {
			if e.Type != "HttpApi" {
				continue
			}
			if e.Properties["ApiId"] != "HttpApi" {
				t.Errorf("%s event %s: ApiId %v, want !Ref HttpApi", name, event, e.Properties["ApiId"])
			}
			method, path := e.Properties["Method"], e.Properties["Path"]
			if method == nil && path == nil {
				if name != "StatusFunction" {
					t.Errorf("%s event %s: the $default route belongs to StatusFunction", name, event)
				}
				continue
			}
			route := fmt.Sprintf("%v %v", method, path)
			if prev, dup := owner[route]; dup {
				t.Errorf("route %s on both %s and %s", route, prev, name)
			}
			owner[route] = name
		}
	}

	// Every path of every route of the table (each form: Host, path
	// prefix, regional) on its function.
	want := map[string]string{}
	for _, route := range slices.Concat(httpapi.Routes, httpapi.ConsoleRoutes) {
		name, ok := templateFunction[route.Function]
		if !ok {
			t.Fatalf("route %s: function %q has no template.yaml resource", route, route.Function)
		}
		for _, p := range route.Paths() {
			want[route.Method+" "+p] = name
		}
	}
	if len(want) == 0 {
		t.Fatal("empty route table")
	}

	for _, name := range templateFunction {
		t.Run(name, func(t *testing.T) {
			t.Parallel()

			for route, wantOwner := range want {
				if wantOwner != name {
					continue
				}
				switch got, ok := owner[route]; {
				case !ok:
					t.Errorf("missing route %s", route)
				case got != name:
					t.Errorf("route %s is on %s", route, got)
				}
			}
		})
	}
	t.Run("NoUnknownRoutes", func(t *testing.T) {
		t.Parallel()

		for route, name := range owner {
			if _, ok := want[route]; !ok {
				t.Errorf("%s has route %s, which httpapi.Routes does not list", name, route)
			}
		}
	})
}

func TestTemplateTicks(t *testing.T) {
	t.Parallel()

	tmpl := loadTemplate(t)
	tests := []struct {
		name    string
		timeout string
	}{
		{name: "ProcessTickFunction", timeout: "900"},
		{name: "DeliverWebhookFunction", timeout: "300"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()

			fn := tmpl.Resources[tt.name].Properties
			var schedules []string
			for _, e := range fn.Events {
				if e.Type == "Schedule" {
					schedules = append(schedules, fmt.Sprint(e.Properties["Schedule"]))
				}
			}
			if !slices.Equal(schedules, []string{"rate(1 minute)"}) {
				t.Errorf("schedules %q, want one rate(1 minute)", schedules)
			}
			if got := fmt.Sprint(fn.Timeout); got != tt.timeout {
				t.Errorf("Timeout %s, want %s", got, tt.timeout)
			}
			if _, ok := fn.Environment.Variables["TICK_BUDGET"]; !ok {
				t.Error("no TICK_BUDGET variable")
			}
		})
	}
}

func TestMakefileBuildTargets(t *testing.T) {
	t.Parallel()

	b, err := os.ReadFile("../Makefile")
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip("no Makefile yet")
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range functionNames {
		t.Run(name, func(t *testing.T) {
			t.Parallel()

			target := regexp.MustCompile(`(?m)^build-` + name + `\s*:`)
			if !target.Match(b) {
				t.Errorf("Makefile has no build-%s target, which sam build runs for BuildMethod makefile", name)
			}
		})
	}
}

// firstSet returns the first of vs that is not empty, as a function's property
// overrides the one in Globals.
func firstSet[T string | []string](vs ...T) T {
	for _, v := range vs {
		if len(v) > 0 {
			return v
		}
	}
	var zero T
	return zero
}
