package wire

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Severity levels used in ErrorResponse.
const (
	SeverityError = "ERROR"
	SeverityFatal = "FATAL"
)

// SQLSTATE codes pgtoken sends itself.
const (
	CodeInvalidPassword          = "28P01" // token rejected at login
	CodeInvalidAuthorization     = "28000" // token expired during a session
	CodeInsufficientPrivilege    = "42501" // the guard refused a statement
	CodeFeatureNotSupported      = "0A000" // not possible in this pool mode
	CodeProtocolViolation        = "08P01"
	CodeConnectionFailure        = "08006" // the server connection broke
	CodeCannotConnectNow         = "57P03"
	CodeAdminShutdown            = "57P01"
	CodeTooManyConnections       = "53300" // pool wait timed out / max_client_conn
	CodeProgramLimitExceeded     = "54000" // message too large
	CodeInvalidCatalogName       = "3D000"
	CodeIdleInTransactionTimeout = "25P03"
	CodeSyntaxError              = "42601"
	CodeInvalidSQLStatementName  = "26000"
	CodeDuplicatePreparedStmt    = "42P05"
	CodeActiveSQLTransaction     = "25001"
	CodeInternal                 = "XX000" // anything unexpected: generic text to the client, details to the log
)

// Error is an error that pgtoken reports to a client as an ErrorResponse.
// Only errors of this type show their text to clients; any other error
// becomes a generic internal error (see ToResponse), so internal details
// never leak.
type Error struct {
	Severity string
	Code     string
	Message  string
	Detail   string
	Hint     string
	Err      error // the cause, for logs only
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s %s: %s: %v", e.Severity, e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s %s: %s", e.Severity, e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an ERROR-severity Error with a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Severity: SeverityError, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Fatalf builds a FATAL-severity Error with a formatted message.
func Fatalf(code, format string, args ...any) *Error {
	return &Error{Severity: SeverityFatal, Code: code, Message: fmt.Sprintf(format, args...)}
}

// WithHint returns a copy of e with a hint set; e itself is left alone, so
// a shared error is never changed.
func (e *Error) WithHint(h string) *Error {
	c := *e
	c.Hint = h
	return &c
}

// IsFatal reports whether err, once sent, ends the client's session.
func IsFatal(err error) bool {
	var pe *Error
	return errors.As(err, &pe) && pe.Severity == SeverityFatal
}

// AppendError appends the ErrorResponse a client sees for err to dst: the
// one way pgtoken writes an error of its own to a client.
func AppendError(dst []byte, err error) []byte {
	b, encErr := ToResponse(err).Encode(dst)
	if encErr != nil {
		// A field too long for the protocol: say no more than that.
		b, _ = ToResponse(Errorf(CodeInternal, "pgtoken: internal error (details are in the pgtoken log)")).Encode(dst)
	}
	return b
}

// ToResponse turns any error into the ErrorResponse a client sees. It is the
// only place errors become protocol messages.
func ToResponse(err error) *pgproto3.ErrorResponse {
	var pe *Error
	if errors.As(err, &pe) {
		return &pgproto3.ErrorResponse{
			Severity:            pe.Severity,
			SeverityUnlocalized: pe.Severity,
			Code:                pe.Code,
			Message:             pe.Message,
			Detail:              pe.Detail,
			Hint:                pe.Hint,
		}
	}
	return &pgproto3.ErrorResponse{
		Severity:            SeverityError,
		SeverityUnlocalized: SeverityError,
		Code:                CodeInternal,
		Message:             "pgtoken: internal error (details are in the pgtoken log)",
	}
}
