// Package deploy holds the operator's files (Grafana dashboard, Prometheus
// alert rules); its tests check them, and docker-compose.yml, against the
// metrics and commands the relay really has.
package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"

	"github.com/outbox-relay/outbox-relay/relay"
)

// exportedMetrics returns the names of every series the relay process
// serves on /metrics: the registry main builds (relay.NewRegistry, the
// relay's collectors, readiness), with the _bucket/_sum/_count series of
// histograms and summaries.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	reg := relay.NewRegistry("test")
	relay.NewMetrics(reg)
	reg.MustRegister(relay.NewReadiness(relay.NewHealth(10 * time.Second)))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range families {
		name := f.GetName()
		names[name] = true
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name+"_sum"], names[name+"_count"] = true, true
		}
	}
	// Prometheus's own series about the scrape.
	names["up"] = true
	return names
}

var (
	// Parts of PromQL that are not metric names: strings, label matchers,
	// ranges and grouping label lists.
	promqlStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promqlMatchers = regexp.MustCompile(`\{[^}]*\}|\[[^\]]*\]`)
	promqlGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promqlIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promqlKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true}
)

// metricNames returns the metric names expr selects: identifiers that are
// neither keywords nor function calls, once strings, matchers, ranges and
// grouping lists are removed.
func metricNames(expr string) []string {
	s := promqlStrings.ReplaceAllString(expr, `""`)
	s = promqlMatchers.ReplaceAllString(s, " ")
	s = promqlGrouping.ReplaceAllString(s, " ")
	var names []string
	for _, loc := range promqlIdent.FindAllStringIndex(s, -1) {
		name := s[loc[0]:loc[1]]
		if loc[0] > 0 && (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9' || s[loc[0]-1] == '.' || s[loc[0]-1] == '$') {
			continue // a number's exponent or a Grafana variable
		}
		rest := strings.TrimLeft(s[loc[1]:], " \t\n")
		if promqlKeywords[strings.ToLower(name)] || strings.HasPrefix(rest, "(") {
			continue
		}
		names = append(names, name)
	}
	return names
}

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want []string
	}{
		{`sum by (job, reason) (increase(outbox_relay_events_dead_lettered_total[10m])) > 0`, []string{"outbox_relay_events_dead_lettered_total"}},
		{`a{job=~"$job", x="by (y)"} / on (instance) b_total[5m] and c > 1e3`, []string{"a", "b_total", "c"}},
		{`histogram_quantile(0.99, sum by (le) (rate(h_bucket{job=~"$job"}[$__rate_interval])))`, []string{"h_bucket"}},
	}
	for _, tt := range tests {
		if got := metricNames(tt.expr); !slices.Equal(got, tt.want) {
			t.Errorf("metricNames(%q) = %q, want %q", tt.expr, got, tt.want)
		}
	}
}

// checkExpr fails the test when expr names no metric or one the relay does
// not export.
func checkExpr(t *testing.T, where, expr string, exported map[string]bool) {
	t.Helper()
	names := metricNames(expr)
	if len(names) == 0 {
		t.Errorf("%s: expression %q names no metric", where, expr)
	}
	for _, name := range names {
		if !exported[name] {
			t.Errorf("%s: expression %q names %s, which the relay does not export", where, expr, name)
		}
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

const alertsFile = "prometheus/alerts.yml"

// TestAlertRules checks the alert rules: valid YAML of the rule-file shape,
// every expression about the relay's real metrics, the alerts the runbook
// promises present, and `promtool check rules` when promtool is installed.
func TestAlertRules(t *testing.T) {
	raw, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules ruleFile
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("%s: %v", alertsFile, err)
	}
	exported := exportedMetrics(t)
	covered := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("%s: rule %q needs alert, expr, a severity label and a summary", alertsFile, r.Alert)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("%s: alert %s: for %q: %v", alertsFile, r.Alert, r.For, err)
				}
			}
			checkExpr(t, alertsFile+": alert "+r.Alert, r.Expr, exported)
			for _, name := range metricNames(r.Expr) {
				covered[name] = true
			}
		}
	}
	for _, want := range []string{"outbox_relay_slot_retained_wal_bytes", "outbox_relay_oldest_unacked_age_seconds",
		"outbox_relay_ready", "outbox_relay_events_dead_lettered_total", "outbox_relay_broker_errors_total"} {
		if !covered[want] {
			t.Errorf("%s: no alert on %s", alertsFile, want)
		}
	}

	t.Run("promtool", func(t *testing.T) {
		promtool, err := exec.LookPath("promtool")
		if err != nil {
			t.Skip("promtool not on PATH (go install github.com/prometheus/prometheus/cmd/promtool@v0.316.0)")
		}
		out, err := exec.Command(promtool, "check", "rules", alertsFile).CombinedOutput()
		if err != nil {
			t.Errorf("promtool check rules %s: %v\n%s", alertsFile, err, out)
		}
	})
}

const dashboardFile = "grafana/outbox-relay.json"

type panel struct {
	Title   string `json:"title"`
	Type    string `json:"type"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

// TestDashboard checks the Grafana dashboard: valid JSON, every panel
// query about the relay's real metrics, and every relay metric shown.
func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title      string  `json:"title"`
		UID        string  `json:"uid"`
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Errorf("%s: title %q, uid %q, want both set", dashboardFile, dash.Title, dash.UID)
	}
	exported := exportedMetrics(t)
	shown := map[string]bool{}
	var walk func([]panel)
	walk = func(panels []panel) {
		for _, p := range panels {
			for _, target := range p.Targets {
				checkExpr(t, dashboardFile+": panel "+p.Title, target.Expr, exported)
				for _, name := range metricNames(target.Expr) {
					shown[name] = true
				}
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			// label_values(<selector>, <label>)
			inner := strings.TrimSuffix(strings.TrimPrefix(v.Definition, "label_values("), ")")
			selector, _, _ := strings.Cut(inner, ", ")
			checkExpr(t, dashboardFile+": variable "+v.Name, selector, exported)
		}
	}
	var missing []string
	for name := range exported {
		if strings.HasPrefix(name, "outbox_relay_") && !shown[name] && !strings.HasSuffix(name, "_bucket") &&
			!strings.HasSuffix(name, "_sum") && !strings.HasSuffix(name, "_count") && !shown[name+"_bucket"] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("%s: no panel shows %s", dashboardFile, strings.Join(missing, ", "))
	}
}
