package wire

import (
	"bytes"
	"encoding/binary"
)

// CString splits a NUL-terminated string off the front of b.
func CString(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// ParseHead returns the statement name and query text of a Parse body
// without copying.
func ParseHead(body []byte) (name, query []byte, ok bool) {
	name, rest, ok := CString(body)
	if !ok {
		return nil, nil, false
	}
	query, rest, ok = CString(rest)
	if !ok || len(rest) < 2 {
		return nil, nil, false
	}
	return name, query, true
}

// BindHead returns the portal and statement names of a Bind body.
func BindHead(body []byte) (portal, stmt []byte, ok bool) {
	portal, rest, ok := CString(body)
	if !ok {
		return nil, nil, false
	}
	stmt, _, ok = CString(rest)
	return portal, stmt, ok
}

// TargetName returns the kind ('S' or 'P') and name of a Describe or Close
// body.
func TargetName(body []byte) (kind byte, name []byte, ok bool) {
	if len(body) < 2 {
		return 0, nil, false
	}
	name, _, ok = CString(body[1:])
	return body[0], name, ok && (body[0] == 'S' || body[0] == 'P')
}

// ExecutePortal returns the portal name of an Execute body.
func ExecutePortal(body []byte) (portal []byte, ok bool) {
	portal, rest, ok := CString(body)
	return portal, ok && len(rest) == 4
}

// QueryText returns the text of a Query body.
func QueryText(body []byte) ([]byte, bool) {
	if len(body) == 0 || body[len(body)-1] != 0 || bytes.IndexByte(body, 0) != len(body)-1 {
		return nil, false
	}
	return body[:len(body)-1], true
}

// Fixed server messages pgtoken sends itself.
var (
	MsgParseComplete      = []byte{'1', 0, 0, 0, 4}
	MsgCloseComplete      = []byte{'3', 0, 0, 0, 4}
	MsgEmptyQueryResponse = []byte{'I', 0, 0, 0, 4}
	MsgAuthenticationOK   = []byte{'R', 0, 0, 0, 8, 0, 0, 0, 0}
	MsgAuthCleartext      = []byte{'R', 0, 0, 0, 8, 0, 0, 0, 3}
)

// ReadyForQuery returns the 6-byte ReadyForQuery message for status.
func ReadyForQuery(status byte) [6]byte {
	return [6]byte{'Z', 0, 0, 0, 5, status}
}

// AppendCommandComplete appends a CommandComplete with tag.
func AppendCommandComplete(dst []byte, tag string) []byte {
	dst = append(dst, 'C')
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+len(tag)+1))
	dst = append(dst, tag...)
	return append(dst, 0)
}
