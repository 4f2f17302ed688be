// mcp-notes-go: a small MCP server on the official Go SDK with no Taskpass code, to run behind
// `taskpass guard`. It serves Streamable HTTP (stateless, JSON answers) on loopback, publishes its
// tools' Taskpass hints in tools/list (`_meta` "dev.taskpass/resource" and "dev.taskpass/action"),
// and echoes the Taskpass-* headers each call arrived with, so tests can see what the guard told it.
//
// With -guard-secret-file (or NOTES_GUARD_SECRET_FILE) it answers only requests carrying that
// secret in Taskpass-Guard-Secret: the Taskpass-* headers are believed only from the guard.
//
//	mcp-notes-go -addr 127.0.0.1:0 -guard-secret-file /run/secrets/guard
//
// It prints `listening http://<addr>` on stdout once it accepts connections. GET /calls lists the
// tool calls it has served (tool, arguments, headers), for tests that check what reached it.
package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

type notes struct {
	mu    sync.Mutex
	byID  map[string]string
	calls []servedCall
}

// servedCall is one tools/call this server executed.
type servedCall struct {
	Tool    string            `json:"tool"`
	Args    map[string]any    `json:"args"`
	Headers map[string]string `json:"headers"`
	// Whether an Authorization header reached the server (the guard strips it).
	Authorization bool `json:"authorization"`
}

type noteArgs struct {
	NoteID string `json:"note_id" jsonschema:"the note id, e.g. n-1"`
}

type noteResult struct {
	NoteID   string            `json:"note_id"`
	Text     string            `json:"text,omitempty"`
	Deleted  bool              `json:"deleted,omitempty"`
	Taskpass map[string]string `json:"taskpass"`
}

// taskpassHeaders are the identity headers the request carried (names in lower case), except the
// guard secret, which is never echoed.
func taskpassHeaders(h http.Header) map[string]string {
	out := map[string]string{}
	for name, values := range h {
		lower := strings.ToLower(name)
		if strings.HasPrefix(lower, "taskpass-") && lower != "taskpass-guard-secret" {
			out[lower] = strings.Join(values, ", ")
		}
	}
	return out
}

func (n *notes) record(req *mcp.CallToolRequest, args noteArgs) map[string]string {
	var h http.Header
	if req.Extra != nil {
		h = req.Extra.Header
	}
	seen := taskpassHeaders(h)
	n.calls = append(n.calls, servedCall{
		Tool:          req.Params.Name,
		Args:          map[string]any{"note_id": args.NoteID},
		Headers:       seen,
		Authorization: h.Get("Authorization") != "",
	})
	return seen
}

func (n *notes) read(_ context.Context, req *mcp.CallToolRequest, args noteArgs) (*mcp.CallToolResult, noteResult, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	seen := n.record(req, args)
	text, ok := n.byID[args.NoteID]
	if !ok {
		return nil, noteResult{}, fmt.Errorf("no note %q", args.NoteID)
	}
	return nil, noteResult{NoteID: args.NoteID, Text: text, Taskpass: seen}, nil
}

func (n *notes) delete(_ context.Context, req *mcp.CallToolRequest, args noteArgs) (*mcp.CallToolResult, noteResult, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	seen := n.record(req, args)
	if _, ok := n.byID[args.NoteID]; !ok {
		return nil, noteResult{}, fmt.Errorf("no note %q", args.NoteID)
	}
	delete(n.byID, args.NoteID)
	return nil, noteResult{NoteID: args.NoteID, Deleted: true, Taskpass: seen}, nil
}

func newServer(n *notes) *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "mcp-notes-go", Version: "1.0.0"}, nil)
	notDestructive := false
	mcp.AddTool(s, &mcp.Tool{
		Name:        "read_note",
		Description: "Reads one note.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true},
		Meta:        mcp.Meta{"dev.taskpass/resource": "notes/{note_id}", "dev.taskpass/action": "read"},
	}, n.read)
	mcp.AddTool(s, &mcp.Tool{
		Name:        "delete_note",
		Description: "Deletes one note for good.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: &notDestructive},
		Meta:        mcp.Meta{"dev.taskpass/resource": "notes/{note_id}", "dev.taskpass/action": "write"},
	}, n.delete)
	return s
}

// requireSecret refuses every request without the guard's shared secret (constant-time compare).
func requireSecret(secret []byte, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Taskpass-Guard-Secret"))
		if subtle.ConstantTimeCompare(got, secret) != 1 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"code":"NOTES_GUARD_SECRET_REQUIRED","message":"requests are accepted only through the guard"}`))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	secretFile := flag.String("guard-secret-file", os.Getenv("NOTES_GUARD_SECRET_FILE"), "file holding the guard's shared secret")
	flag.Parse()

	n := &notes{byID: map[string]string{"n-1": "buy milk", "n-2": "call the bank", "n-3": "water the plants"}}
	server := newServer(n)
	mcpHandler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server },
		&mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true})

	var handler http.Handler = mcpHandler
	if *secretFile != "" {
		raw, err := os.ReadFile(*secretFile)
		if err != nil {
			log.Fatalf("reading the guard secret: %v", err)
		}
		secret := []byte(strings.TrimSpace(string(raw)))
		if len(secret) < 16 {
			log.Fatal("the guard secret must be at least 16 characters")
		}
		handler = requireSecret(secret, mcpHandler)
	}

	mux := http.NewServeMux()
	mux.Handle("/mcp", handler)
	mux.HandleFunc("GET /calls", func(w http.ResponseWriter, _ *http.Request) {
		n.mu.Lock()
		defer n.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"calls": n.calls})
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening http://%s\n", ln.Addr())
	if err := http.Serve(ln, mux); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
