package expr

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestCompileAndEval(t *testing.T) {
	claims := map[string]any{
		"sub": "alice", "groups": []string{"dev", "admin"}, "scope": "read write",
		"level": Normalize(json.Number("3")), "ratio": Normalize(json.Number("0.5")),
		"org": Normalize(map[string]any{"id": json.Number("7"), "tags": []any{"a"}}),
	}
	cases := []struct {
		expr    string
		want    bool
		wantErr string // compile error
	}{
		{expr: "'admin' in claims.groups", want: true},
		{expr: "'root' in claims.groups", want: false},
		{expr: "claims.scope.split(' ').exists(s, s == 'write')", want: true},
		{expr: "claims.level >= 2 && claims.ratio < 1.0", want: true},
		{expr: "claims.org.id == 7 && 'a' in claims.org.tags", want: true},
		{expr: "claims.missing == 'x'", want: false},
		{expr: "has(claims.email)", want: false},
		{expr: "claims.sub", want: false},
		{expr: "size(claims) + 1", wantErr: "not bool"},
		{expr: "claims.(", wantErr: "Syntax error"},
		{expr: "unknown.x", wantErr: "undeclared reference"},
		{expr: "  ", wantErr: "empty"},
	}
	for _, c := range cases {
		t.Run(c.expr, func(t *testing.T) {
			p, err := Compile(c.expr)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Compile error = %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := p.Eval(claims); got != c.want {
				t.Fatalf("Eval = %v, want %v", got, c.want)
			}
		})
	}
}

func TestCostLimitStopsRunawayExpressions(t *testing.T) {
	p, err := Compile("[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c, [1,2,3,4,5,6,7,8,9,10].all(d, [1,2,3,4,5,6,7,8,9,10].all(e, a+b+c+d+e > 0)))))")
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := p.Eval(map[string]any{}); ok || err == nil {
		t.Fatalf("Eval = %v, %v; want false with a cost limit error", ok, err)
	}
}
