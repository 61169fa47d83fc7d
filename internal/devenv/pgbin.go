package devenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// errNoServerBinaries is returned when no PostgreSQL server binaries are found.
var errNoServerBinaries = errors.New("no PostgreSQL server binaries (initdb, pg_ctl) found " +
	"in $PG_BIN, `pg_config --bindir` or /usr/lib/postgresql/*/bin: " +
	"install them (Debian/Ubuntu: apt-get install postgresql) or set PG_BIN to their directory")

// FindServerBinaries returns the directory holding initdb and pg_ctl: $PG_BIN
// when set, else `pg_config --bindir`, else the highest-versioned
// /usr/lib/postgresql/*/bin (Debian keeps the server binaries off $PATH).
func FindServerBinaries() (string, error) {
	if dir := os.Getenv("PG_BIN"); dir != "" {
		if !hasServerBinaries(dir) {
			return "", fmt.Errorf("PG_BIN=%s: no initdb and pg_ctl there", dir)
		}
		return dir, nil
	}
	// pg_config can come from a client-only package (libpq-dev) and name a
	// bindir without a server in it, so it is only a hint.
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); hasServerBinaries(dir) {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return majorVersion(dirs[i]) > majorVersion(dirs[j]) })
	for _, dir := range dirs {
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}
	return "", errNoServerBinaries
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() {
			return false
		}
	}
	return true
}

// majorVersion reads the version out of /usr/lib/postgresql/<version>/bin.
func majorVersion(bindir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(bindir)), 64)
	return v
}

// serverAccount is the unprivileged OS account the server runs as when we
// are root: postgres refuses to run as root.
type serverAccount struct {
	name     string
	uid, gid uint32
}

// unprivilegedAccount returns nil when we are not root, else the postgres
// account, or nobody when there is none.
func unprivilegedAccount() (*serverAccount, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	var lookupErrs []error
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			lookupErrs = append(lookupErrs, err)
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			lookupErrs = append(lookupErrs, fmt.Errorf("user %s: uid %q gid %q", name, u.Uid, u.Gid))
			continue
		}
		return &serverAccount{name: name, uid: uint32(uid), gid: uint32(gid)}, nil
	}
	return nil, fmt.Errorf("running as root and no unprivileged account to run postgres as: %w", errors.Join(lookupErrs...))
}

// sysProcAttr runs a command as the account, or as ourselves when a is nil.
func (a *serverAccount) sysProcAttr() *syscall.SysProcAttr {
	if a == nil {
		return nil
	}
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: a.uid, Gid: a.gid}}
}

// chown hands path over to the account; a no-op when a is nil.
func (a *serverAccount) chown(path string) error {
	if a == nil {
		return nil
	}
	if err := os.Chown(path, int(a.uid), int(a.gid)); err != nil {
		return fmt.Errorf("chown %s to %s: %w", path, a.name, err)
	}
	return nil
}

// tempBase is where cluster directories go. The server account must be able
// to reach it, so when $TMPDIR sits below a directory only root may enter we
// fall back to /tmp.
func tempBase(a *serverAccount) string {
	base := os.TempDir()
	if a == nil {
		return base
	}
	for dir := base; ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if dir == filepath.Dir(dir) {
			return base
		}
	}
}
