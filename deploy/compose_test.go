package deploy

import (
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/outbox-relay/outbox-relay/relay"
)

type composeService struct {
	Image       string         `yaml:"image"`
	Build       any            `yaml:"build"`
	Command     []string       `yaml:"command"`
	Environment map[string]any `yaml:"environment"`
	Volumes     []string       `yaml:"volumes"`
	Ports       []string       `yaml:"ports"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

// TestComposeFile checks docker-compose.yml without a Docker engine: the
// relay image is built by one service and reused by the others, every
// streaming relay is health-checked with `outbox-relay probe`, and the
// relays connect as the least-privilege role that the Postgres init creates
// with sql/roles.sql, not as the superuser.
func TestComposeFile(t *testing.T) {
	raw, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]composeService `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	postgres, ok := compose.Services["postgres"]
	if !ok {
		t.Fatal("docker-compose.yml: no postgres service")
	}
	superuser, _ := postgres.Environment["POSTGRES_USER"].(string)

	const relayImage = "outbox-relay:local"
	var builders, streamers []string
	for name, s := range compose.Services {
		if s.Build != nil {
			builders = append(builders, name)
			if s.Image != relayImage {
				t.Errorf("service %s builds image %q, want %q", name, s.Image, relayImage)
			}
		}
		if s.Image != relayImage {
			continue
		}
		if slices.Equal(s.Command, []string{"run"}) {
			streamers = append(streamers, name)
			if s.Healthcheck == nil || !slices.Equal(s.Healthcheck.Test, []string{"CMD", "/outbox-relay", "probe"}) {
				t.Errorf("service %s: healthcheck %v, want test [CMD /outbox-relay probe]", name, s.Healthcheck)
			}
			checkHTTPAddr(t, name, s)
		}
		pgURL, _ := s.Environment[relay.EnvPrefix+"PG_URL"].(string)
		u, err := url.Parse(pgURL)
		if err != nil || u.User == nil {
			t.Errorf("service %s: PG_URL %q has no user", name, pgURL)
			continue
		}
		if user := u.User.Username(); user != "outbox_relay" || user == superuser {
			t.Errorf("service %s connects as %q, want the least-privilege role outbox_relay of sql/roles.sql", name, user)
		}
		password, _ := u.User.Password()
		if want, _ := postgres.Environment["OUTBOX_RELAY_DB_PASSWORD"].(string); password != want {
			t.Errorf("service %s: PG_URL password %q, want the role's password %q from the postgres service", name, password, want)
		}
	}
	if len(builders) != 1 {
		t.Errorf("services with build: %v, want exactly one (the image is built once)", builders)
	}
	if len(streamers) < 1 {
		t.Errorf("no service runs the relay (command [run])")
	}

	// The role is created at Postgres's first start by the init script,
	// from sql/roles.sql.
	for _, want := range []string{"./docker/initdb:/docker-entrypoint-initdb.d:ro", "./sql:/sql:ro"} {
		if !slices.Contains(postgres.Volumes, want) {
			t.Errorf("postgres volumes %v, want %s", postgres.Volumes, want)
		}
	}
	init, err := os.ReadFile("../docker/initdb/10-outbox-relay.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`-f "$sql_dir/roles.sql"`, "-v role=outbox_relay", `password="$OUTBOX_RELAY_DB_PASSWORD"`, `"$sql_dir/outbox.sql"`, "${SQL_DIR:-/sql}"} {
		if !strings.Contains(string(init), want) {
			t.Errorf("docker/initdb/10-outbox-relay.sh does not contain %q", want)
		}
	}
}

// checkHTTPAddr checks that a relay service serves on the default port and
// publishes it.
func checkHTTPAddr(t *testing.T, name string, s composeService) {
	t.Helper()
	defaults, err := relay.LoadConfigFor(nil, relay.Needs{})
	if err != nil {
		t.Fatal(err)
	}
	_, defaultPort, _ := net.SplitHostPort(defaults.HTTPAddr)
	addr, _ := s.Environment[relay.EnvPrefix+"HTTP_ADDR"].(string)
	if _, port, _ := net.SplitHostPort(addr); port != defaultPort {
		t.Errorf("service %s: HTTP_ADDR %q, want the default port %s", name, addr, defaultPort)
	}
	published := false
	for _, p := range s.Ports {
		published = published || strings.HasSuffix(p, ":"+defaultPort)
	}
	if !published {
		t.Errorf("service %s: ports %v do not publish %s", name, s.Ports, defaultPort)
	}
}
