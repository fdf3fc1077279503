package token

import (
	"bytes"
	"errors"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// This file holds a strict JSON reader for token headers, claims and JWK Sets. encoding/json
// accepts duplicate member names (the last wins), replaces invalid UTF-8 and lone surrogates
// with U+FFFD, and tolerates whitespace around the value; a token that two parsers can read
// differently is exactly what RFC 8725 warns about, so keyward checks the bytes itself before
// decoding them. The reader allocates nothing for well-formed input without escapes.

// maxJSONDepth bounds nesting. Headers and claims keyward issues nest two levels at most.
const maxJSONDepth = 32

// Errors of the strict JSON reader. They name no input bytes.
var (
	errJSONSyntax    = errors.New("invalid JSON")
	errJSONNotObject = errors.New("not a JSON object")
	errJSONTrailing  = errors.New("data after the JSON object")
	errJSONDuplicate = errors.New("duplicate member name")
	errJSONUTF8      = errors.New("invalid UTF-8 in JSON string")
	errJSONEscape    = errors.New("invalid escape in JSON string")
	errJSONDepth     = errors.New("JSON nested too deeply")
)

// memberFunc receives one member of an object: its unescaped name and its raw value. The
// slices alias the input and are only valid during the call.
type memberFunc func(name, value []byte) error

// scanObject checks that data is exactly one strict JSON object (nothing before or after it,
// not even whitespace) and calls fn, if not nil, for each of its top-level members in order.
// Strict means: RFC 8259 syntax, valid UTF-8, no lone surrogate escapes, and no duplicate
// member names in any object at any depth. An error returned by fn is returned unchanged.
func scanObject(data []byte, fn memberFunc) error {
	if len(data) == 0 || data[0] != '{' {
		return errJSONNotObject
	}
	s := jsonScanner{data: data}
	if err := s.object(1, fn); err != nil {
		return err
	}
	if s.pos != len(data) {
		return errJSONTrailing
	}
	return nil
}

// scanArray calls fn for each element of the raw JSON array value, which must already have
// passed scanObject as part of its enclosing object.
func scanArray(value []byte, fn func(elem []byte) error) error {
	if len(value) == 0 || value[0] != '[' {
		return errJSONSyntax
	}
	s := jsonScanner{data: value, pos: 1}
	s.skipSpace()
	if s.peek() == ']' {
		return nil
	}
	for {
		start := s.pos
		if err := s.value(1); err != nil {
			return err
		}
		if err := fn(value[start:s.pos]); err != nil {
			return err
		}
		s.skipSpace()
		switch s.peek() {
		case ',':
			s.pos++
			s.skipSpace()
		case ']':
			return nil
		default:
			return errJSONSyntax
		}
	}
}

type jsonScanner struct {
	data []byte
	pos  int
}

// peek returns the current byte, or 0 at the end of input (0 is never valid there).
func (s *jsonScanner) peek() byte {
	if s.pos < len(s.data) {
		return s.data[s.pos]
	}
	return 0
}

func (s *jsonScanner) skipSpace() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

func (s *jsonScanner) value(depth int) error {
	switch c := s.peek(); {
	case c == '{':
		return s.object(depth+1, nil)
	case c == '[':
		return s.array(depth + 1)
	case c == '"':
		_, _, err := s.str()
		return err
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || ('0' <= c && c <= '9'):
		return s.number()
	default:
		return errJSONSyntax
	}
}

// smallObject is the number of member names checked for duplicates by linear search before
// switching to a map.
const smallObject = 16

func (s *jsonScanner) object(depth int, fn memberFunc) error {
	if depth > maxJSONDepth {
		return errJSONDepth
	}
	s.pos++ // '{'
	s.skipSpace()
	if s.peek() == '}' {
		s.pos++
		return nil
	}
	var small [smallObject][]byte
	names := small[:0]
	var many map[string]struct{}
	for {
		if s.peek() != '"' {
			return errJSONSyntax
		}
		content, escaped, err := s.str()
		if err != nil {
			return err
		}
		name := content
		if escaped {
			name = unescape(content)
		}
		if many == nil {
			for _, n := range names {
				if bytes.Equal(n, name) {
					return errJSONDuplicate
				}
			}
			if len(names) < smallObject {
				names = append(names, name)
			} else {
				many = make(map[string]struct{}, 2*smallObject)
				for _, n := range names {
					many[string(n)] = struct{}{}
				}
			}
		}
		if many != nil {
			if _, dup := many[string(name)]; dup {
				return errJSONDuplicate
			}
			many[string(name)] = struct{}{}
		}
		s.skipSpace()
		if s.peek() != ':' {
			return errJSONSyntax
		}
		s.pos++
		s.skipSpace()
		start := s.pos
		if err := s.value(depth); err != nil {
			return err
		}
		if fn != nil {
			if err := fn(name, s.data[start:s.pos]); err != nil {
				return err
			}
		}
		s.skipSpace()
		switch s.peek() {
		case ',':
			s.pos++
			s.skipSpace()
		case '}':
			s.pos++
			return nil
		default:
			return errJSONSyntax
		}
	}
}

func (s *jsonScanner) array(depth int) error {
	if depth > maxJSONDepth {
		return errJSONDepth
	}
	s.pos++ // '['
	s.skipSpace()
	if s.peek() == ']' {
		s.pos++
		return nil
	}
	for {
		if err := s.value(depth); err != nil {
			return err
		}
		s.skipSpace()
		switch s.peek() {
		case ',':
			s.pos++
			s.skipSpace()
		case ']':
			s.pos++
			return nil
		default:
			return errJSONSyntax
		}
	}
}

// str reads a string starting at its opening quote and returns its content between the
// quotes, still escaped, and whether it holds any escape.
func (s *jsonScanner) str() (content []byte, escaped bool, err error) {
	s.pos++ // '"'
	start := s.pos
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		switch {
		case c == '"':
			content = s.data[start:s.pos]
			s.pos++
			return content, escaped, nil
		case c == '\\':
			escaped = true
			if err := s.escape(); err != nil {
				return nil, false, err
			}
		case c < 0x20:
			return nil, false, errJSONSyntax
		case c < utf8.RuneSelf:
			s.pos++
		default:
			r, size := utf8.DecodeRune(s.data[s.pos:])
			if r == utf8.RuneError && size == 1 {
				return nil, false, errJSONUTF8
			}
			s.pos += size
		}
	}
	return nil, false, errJSONSyntax
}

// escape reads one escape sequence at a backslash. A \u escape of a UTF-16 surrogate must be
// a high surrogate immediately followed by an escaped low surrogate.
func (s *jsonScanner) escape() error {
	if s.pos+1 >= len(s.data) {
		return errJSONEscape
	}
	switch s.data[s.pos+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		s.pos += 2
		return nil
	case 'u':
	default:
		return errJSONEscape
	}
	r, ok := hex4(s.data[s.pos+2:])
	if !ok {
		return errJSONEscape
	}
	s.pos += 6
	if !utf16.IsSurrogate(r) {
		return nil
	}
	if r >= 0xdc00 || s.pos+1 >= len(s.data) || s.data[s.pos] != '\\' || s.data[s.pos+1] != 'u' {
		return errJSONEscape
	}
	low, ok := hex4(s.data[s.pos+2:])
	if !ok || low < 0xdc00 || low > 0xdfff {
		return errJSONEscape
	}
	s.pos += 6
	return nil
}

func (s *jsonScanner) number() error {
	d, p := s.data, s.pos
	if p < len(d) && d[p] == '-' {
		p++
	}
	switch {
	case p < len(d) && d[p] == '0':
		p++
	case p < len(d) && '1' <= d[p] && d[p] <= '9':
		p = digits(d, p)
	default:
		return errJSONSyntax
	}
	if p < len(d) && d[p] == '.' {
		q := digits(d, p+1)
		if q == p+1 {
			return errJSONSyntax
		}
		p = q
	}
	if p < len(d) && (d[p] == 'e' || d[p] == 'E') {
		p++
		if p < len(d) && (d[p] == '+' || d[p] == '-') {
			p++
		}
		q := digits(d, p)
		if q == p {
			return errJSONSyntax
		}
		p = q
	}
	s.pos = p
	return nil
}

func digits(d []byte, p int) int {
	for p < len(d) && '0' <= d[p] && d[p] <= '9' {
		p++
	}
	return p
}

func (s *jsonScanner) literal(lit string) error {
	if !bytes.HasPrefix(s.data[s.pos:], []byte(lit)) {
		return errJSONSyntax
	}
	s.pos += len(lit)
	return nil
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// unescape decodes the content of a string that jsonScanner.str accepted.
func unescape(content []byte) []byte {
	out := make([]byte, 0, len(content))
	for i := 0; i < len(content); {
		c := content[i]
		if c != '\\' {
			out = append(out, c)
			i++
			continue
		}
		switch content[i+1] {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, _ := hex4(content[i+2:])
			if utf16.IsSurrogate(r) {
				low, _ := hex4(content[i+8:])
				r = utf16.DecodeRune(r, low)
				i += 6
			}
			out = utf8.AppendRune(out, r)
			i += 6
			continue
		default: // '"', '\\', '/'
			out = append(out, content[i+1])
		}
		i += 2
	}
	return out
}

// jsonString decodes a raw JSON value that must be a string.
func jsonString(value []byte) (string, bool) {
	if len(value) < 2 || value[0] != '"' {
		return "", false
	}
	content := value[1 : len(value)-1]
	if bytes.IndexByte(content, '\\') < 0 {
		return string(content), true
	}
	return string(unescape(content)), true
}

// jsonStrings decodes a raw JSON value that must be an array of strings.
func jsonStrings(value []byte) ([]string, bool) {
	if len(value) == 0 || value[0] != '[' {
		return nil, false
	}
	out := []string{}
	err := scanArray(value, func(elem []byte) error {
		s, ok := jsonString(elem)
		if !ok {
			return errJSONSyntax
		}
		out = append(out, s)
		return nil
	})
	return out, err == nil
}

// jsonInt decodes a raw JSON value that must be an integer written without fraction or
// exponent, within int64.
func jsonInt(value []byte) (int64, bool) {
	digits := value
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 {
		return 0, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(string(value), 10, 64)
	return n, err == nil
}
