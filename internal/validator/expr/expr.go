// Package expr compiles and evaluates the CEL expressions of AccessPolicy rules ("when"). The
// controller compiles them to report errors in the policy's conditions; validators compile them
// once per policy generation and evaluate the program on each request.
package expr

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/ext"

	keywardv1 "github.com/keyward/keyward/api/v1alpha1"
)

// CostLimit bounds the work of one evaluation, so that no expression can make a check slow.
const CostLimit = 100_000

// Program is a compiled expression, safe for concurrent use.
type Program struct {
	prg cel.Program
}

var env *cel.Env

func init() {
	var err error
	env, err = cel.NewEnv(
		cel.Variable("claims", cel.MapType(cel.StringType, cel.DynType)),
		ext.Strings(),
		ext.Lists(),
		ext.Sets(),
	)
	if err != nil {
		panic(fmt.Sprintf("cannot build CEL environment: %v", err))
	}
}

// Compile compiles a when expression. It must be a boolean expression over the variable
// claims (a map of claim name to value).
func Compile(src string) (*Program, error) {
	if strings.TrimSpace(src) == "" {
		return nil, errors.New("expression is empty")
	}
	ast, iss := env.Compile(src)
	if iss.Err() != nil {
		return nil, iss.Err()
	}
	if ast.OutputType() != cel.BoolType && ast.OutputType() != cel.DynType {
		return nil, fmt.Errorf("expression returns %s, not bool", ast.OutputType())
	}
	prg, err := env.Program(ast, cel.CostLimit(CostLimit), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, fmt.Errorf("cannot plan expression: %w", err)
	}
	return &Program{prg: prg}, nil
}

// Eval evaluates the program over claims. Anything but a true result, including an error
// (a missing claim, a type mismatch, the cost limit), is false.
func (p *Program) Eval(claims map[string]any) (bool, error) {
	out, _, err := p.prg.Eval(map[string]any{"claims": claims})
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, errors.New("expression did not return a bool")
	}
	return b, nil
}

// Normalize converts decoded JSON values (json.Number in particular) to the types CEL knows:
// integers to int64, other numbers to float64, recursively.
func Normalize(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = Normalize(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = Normalize(e)
		}
		return out
	}
	return v
}

// PolicyErrors returns one message per rule of the policy whose when expression does not
// compile, naming the rule: what the AccessPolicy controller reports in its conditions.
func PolicyErrors(p *keywardv1.AccessPolicy) []string {
	var out []string
	for i, r := range p.Spec.Rules {
		if r.When == "" {
			continue
		}
		if _, err := Compile(r.When); err != nil {
			out = append(out, fmt.Sprintf("rules[%d].when: %v", i, err))
		}
	}
	return out
}
