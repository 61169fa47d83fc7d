package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/outbox-relay/outbox-relay/relay"
)

const probeUsage = `usage: outbox-relay probe [--live] [--timeout D]

Asks the relay running on OUTBOX_RELAY_HTTP_ADDR (this machine or container)
whether it is ready (GET /readyz; with --live, alive: GET /healthz), prints
one line saying why, and exits 0 when it is and 1 when it is not or does not
answer. It needs no shell or curl, so it works as the health check of the
distroless image:

  healthcheck: {test: ["CMD", "/outbox-relay", "probe"]}

A wildcard listen address (":9465", "0.0.0.0:9465", "[::]:9465") is probed
on 127.0.0.1.

flags:
`

func runProbe(args []string, cfg relay.Config, _ zerolog.Logger, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("probe", flag.ContinueOnError)
	flags.SetOutput(stderr)
	live := flags.Bool("live", false, "check liveness (/healthz) instead of readiness (/readyz)")
	timeout := flags.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if code, ok := parseFlags(flags, args, probeUsage, stdout); !ok {
		return code
	}
	if cfg.HTTPAddr == "" {
		fmt.Fprintf(stderr, "outbox-relay probe: %sHTTP_ADDR is empty: the relay serves no health endpoint\n", relay.EnvPrefix)
		return exitUsage
	}
	url, err := probeURL(cfg.HTTPAddr, *live)
	if err != nil {
		fmt.Fprintf(stderr, "outbox-relay probe: %v\n", err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	ok, line := probe(ctx, url)
	fmt.Fprintln(stdout, line)
	if !ok {
		return exitFailed
	}
	return exitOK
}

// probeURL is the health endpoint's URL for the relay listening on addr.
func probeURL(addr string, live bool) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%sHTTP_ADDR %q: %w", relay.EnvPrefix, addr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	path := "/readyz"
	if live {
		path = "/healthz"
	}
	return "http://" + net.JoinHostPort(host, port) + path, nil
}

// probe GETs url and returns whether it answered 200 and a one-line reason:
// the relay's own (role and reason from the JSON body) or the failure.
func probe(ctx context.Context, url string) (ok bool, line string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, fmt.Sprintf("not ok: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, fmt.Sprintf("not ok: %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var answer struct {
		Status string `json:"status"`
		Role   string `json:"role"`
		Reason string `json:"reason"`
	}
	detail := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &answer) == nil {
		detail = strings.TrimSpace(strings.Join(nonEmpty(answer.Status, answer.Role, answer.Reason), ": "))
	}
	detail = printable(detail, 200)
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Sprintf("not ok: %s answered %s: %s", url, resp.Status, detail)
	}
	return true, fmt.Sprintf("ok: %s", detail)
}

// nonEmpty drops empty strings and repeats of the one before
// ("streaming: streaming").
func nonEmpty(ss ...string) []string {
	out := ss[:0]
	for _, s := range ss {
		if s != "" && (len(out) == 0 || out[len(out)-1] != s) {
			out = append(out, s)
		}
	}
	return out
}
