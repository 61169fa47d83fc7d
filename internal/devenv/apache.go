package devenv

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// kafkaDirPrefix names broker directories, so that a later start can find
// and reap the brokers of a process that died without closing them.
const kafkaDirPrefix = "outbox-relay-kafka-"

// controllerNodeID is the node id of the dedicated controller of a
// multi-broker cluster; brokers are nodes 1…n.
const controllerNodeID = 1000

// SCRAMUser is a SASL/SCRAM credential a broker is formatted with.
type SCRAMUser struct {
	// Mechanism is SCRAM-SHA-256 or SCRAM-SHA-512.
	Mechanism string
	User      string
	Password  string
}

// ApacheOptions tunes StartApacheKafka. The zero value is one plaintext
// broker+controller with auto-creation off.
type ApacheOptions struct {
	// Brokers is 1 (one combined broker and controller) or 3 (three
	// brokers and a dedicated controller, so that brokers can die while the
	// quorum lives; replication factor 3 and min.insync.replicas=2 are the
	// defaults).
	Brokers int
	// AutoCreateTopics sets auto.create.topics.enable.
	AutoCreateTopics bool
	// MessageMaxBytes sets message.max.bytes; 0 keeps the broker default.
	MessageMaxBytes int
	// SASLSCRAM, when set, makes the client listener SASL_PLAINTEXT (or
	// SASL_SSL with TLS) accepting only this SCRAM user.
	SASLSCRAM *SCRAMUser
	// TLS makes the client listener TLS with a certificate for 127.0.0.1
	// signed by a CA generated for this cluster (CAFile).
	TLS bool
	// LogDir receives each broker's log (broker-<i>.log, and its stdout and
	// stderr in broker-<i>.out); empty means the cluster's temporary
	// directory, removed by Close.
	LogDir string
	// ExtraConfig are server.properties entries for every broker, applied
	// after (and so overriding) the defaults.
	ExtraConfig map[string]string
	// JVMArgs are appended to the defaults (-Xmx256m -XX:+UseSerialGC).
	JVMArgs []string
}

// ApacheKafka is an Apache Kafka cluster in KRaft mode, run as java
// processes from the jars ApacheKafkaJars fetches, listening on loopback
// ports. Every broker has two listeners: the client listener (Addrs), which
// is TLS and/or SASL when asked for, and a plaintext one (InternalAddrs) for
// replication and for test helpers.
type ApacheKafka struct {
	java, jars string
	dir        string // removed by Close
	logDir     string
	caFile     string
	opts       ApacheOptions

	controller *kafkaNode   // nil with one combined node
	brokers    []*kafkaNode // index i is node id i+1

	mu        sync.Mutex // guards the nodes' processes
	closeOnce sync.Once
}

type kafkaNode struct {
	name                         string // broker-0, controller
	id                           int
	dir                          string
	config                       string
	client, internal, controller int // ports; 0 when the node has no such listener

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd exited
}

// StartApacheKafka formats and starts a cluster as opts say and returns
// once a metadata request to it lists every broker. The caller must Close it.
func StartApacheKafka(ctx context.Context, opts ApacheOptions) (*ApacheKafka, error) {
	if opts.Brokers == 0 {
		opts.Brokers = 1
	}
	if opts.Brokers < 1 {
		return nil, fmt.Errorf("apache kafka: %d brokers", opts.Brokers)
	}
	java, jars, dir, err := newJavaWorkspace(ctx, kafkaJars, kafkaDirPrefix)
	if err != nil {
		return nil, err
	}
	k := &ApacheKafka{java: java, jars: jars, dir: dir, logDir: opts.LogDir, opts: opts}
	if k.logDir == "" {
		k.logDir = filepath.Join(dir, "logs")
	}
	if err := k.start(ctx); err != nil {
		k.Close()
		return nil, err
	}
	return k, nil
}

func (k *ApacheKafka) start(ctx context.Context) error {
	if err := os.WriteFile(filepath.Join(k.dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("apache kafka: %w", err)
	}
	if err := os.MkdirAll(k.logDir, 0o755); err != nil {
		return fmt.Errorf("apache kafka: %w", err)
	}
	var keystore string
	if k.opts.TLS {
		var err error
		if k.caFile, keystore, err = writeTLSFiles(k.dir); err != nil {
			return err
		}
	}

	n := k.opts.Brokers
	ports, err := freePorts(3*n + 1)
	if err != nil {
		return err
	}
	controllerPort := ports[3*n]
	if n > 1 {
		k.controller = &kafkaNode{name: "controller", id: controllerNodeID, controller: controllerPort}
	}
	for i := range n {
		b := &kafkaNode{name: fmt.Sprintf("broker-%d", i), id: i + 1, client: ports[3*i], internal: ports[3*i+1]}
		if n == 1 {
			b.controller = controllerPort
		}
		k.brokers = append(k.brokers, b)
	}

	clusterID, err := k.tool(ctx, "kafka.tools.StorageTool", "random-uuid")
	if err != nil {
		return err
	}
	for _, node := range k.nodes() {
		node.dir = filepath.Join(k.dir, node.name)
		node.config = filepath.Join(node.dir, "server.properties")
		if err := os.MkdirAll(node.dir, 0o755); err != nil {
			return fmt.Errorf("apache kafka: %w", err)
		}
		if err := os.WriteFile(node.config, []byte(k.serverProperties(node, controllerPort, keystore)), 0o644); err != nil {
			return fmt.Errorf("apache kafka: %w", err)
		}
		if err := os.WriteFile(filepath.Join(node.dir, "log4j2.xml"), []byte(log4jConfig(filepath.Join(k.logDir, node.name+".log"))), 0o644); err != nil {
			return fmt.Errorf("apache kafka: %w", err)
		}
		args := []string{"format", "-t", strings.TrimSpace(clusterID), "-c", node.config}
		if node.controller != 0 {
			args = append(args, "--standalone")
			if u := k.opts.SASLSCRAM; u != nil {
				args = append(args, "--add-scram", fmt.Sprintf("%s=[name=%s,password=%s]", u.Mechanism, u.User, u.Password))
			}
		}
		if _, err := k.tool(ctx, "kafka.tools.StorageTool", args...); err != nil {
			return fmt.Errorf("format %s: %w", node.name, err)
		}
	}

	k.mu.Lock()
	for _, node := range k.nodes() {
		if err := k.launch(node); err != nil {
			k.mu.Unlock()
			return err
		}
	}
	k.mu.Unlock()
	return k.waitReady(ctx, "all brokers to register", func(m clusterMetadata) bool {
		return len(m.brokers) == n
	})
}

// nodes are the controller (if any) and the brokers, in start order.
func (k *ApacheKafka) nodes() []*kafkaNode {
	if k.controller == nil {
		return k.brokers
	}
	return append([]*kafkaNode{k.controller}, k.brokers...)
}

// serverProperties is node's server.properties.
func (k *ApacheKafka) serverProperties(node *kafkaNode, controllerPort int, keystore string) string {
	n := k.opts.Brokers
	c := map[string]string{
		"node.id":                             strconv.Itoa(node.id),
		"log.dirs":                            filepath.Join(node.dir, "data"),
		"controller.quorum.bootstrap.servers": fmt.Sprintf("127.0.0.1:%d", controllerPort),
		"controller.listener.names":           "CONTROLLER",
		// The controller needs it too: in KRaft it is the cluster default
		// for new topics and for eligible leader replicas.
		"min.insync.replicas": strconv.Itoa(min(n, 2)),
		// A dead broker is fenced, and leaves the ISR, within seconds.
		"broker.heartbeat.interval.ms": "500",
		"broker.session.timeout.ms":    "3000",
	}
	// Brokers name the controller's listener too, to reach it.
	var roles, listeners []string
	protocols := []string{"CONTROLLER:PLAINTEXT"}
	if node.controller != 0 {
		roles = append(roles, "controller")
		listeners = append(listeners, fmt.Sprintf("CONTROLLER://127.0.0.1:%d", node.controller))
	}
	if node.client != 0 {
		roles = append([]string{"broker"}, roles...)
		client := fmt.Sprintf("CLIENT://127.0.0.1:%d", node.client)
		internal := fmt.Sprintf("INTERNAL://127.0.0.1:%d", node.internal)
		listeners = append([]string{client, internal}, listeners...)
		protocols = append(protocols, "CLIENT:"+k.clientProtocol(), "INTERNAL:PLAINTEXT")
		c["advertised.listeners"] = client + "," + internal
		c["inter.broker.listener.name"] = "INTERNAL"
		c["auto.create.topics.enable"] = strconv.FormatBool(k.opts.AutoCreateTopics)
		c["num.partitions"] = "3"
		c["default.replication.factor"] = strconv.Itoa(min(n, 3))
		c["offsets.topic.replication.factor"] = strconv.Itoa(min(n, 3))
		c["offsets.topic.num.partitions"] = "3"
		c["transaction.state.log.replication.factor"] = strconv.Itoa(min(n, 3))
		c["transaction.state.log.min.isr"] = strconv.Itoa(min(n, 2))
		c["share.coordinator.state.topic.replication.factor"] = strconv.Itoa(min(n, 3))
		c["share.coordinator.state.topic.min.isr"] = strconv.Itoa(min(n, 2))
		c["group.initial.rebalance.delay.ms"] = "0"
		if k.opts.MessageMaxBytes > 0 {
			c["message.max.bytes"] = strconv.Itoa(k.opts.MessageMaxBytes)
		}
		if k.opts.TLS {
			c["listener.name.client.ssl.keystore.type"] = "PEM"
			c["listener.name.client.ssl.keystore.location"] = keystore
		}
		if u := k.opts.SASLSCRAM; u != nil {
			mech := strings.ToLower(u.Mechanism)
			c["listener.name.client.sasl.enabled.mechanisms"] = u.Mechanism
			c["listener.name.client."+mech+".sasl.jaas.config"] = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
		}
		maps.Copy(c, k.opts.ExtraConfig)
	}
	c["process.roles"] = strings.Join(roles, ",")
	c["listeners"] = strings.Join(listeners, ",")
	c["listener.security.protocol.map"] = strings.Join(protocols, ",")

	var b strings.Builder
	for _, key := range slices.Sorted(maps.Keys(c)) {
		fmt.Fprintf(&b, "%s=%s\n", key, c[key])
	}
	return b.String()
}

func (k *ApacheKafka) clientProtocol() string {
	switch {
	case k.opts.SASLSCRAM != nil && k.opts.TLS:
		return "SASL_SSL"
	case k.opts.SASLSCRAM != nil:
		return "SASL_PLAINTEXT"
	case k.opts.TLS:
		return "SSL"
	}
	return "PLAINTEXT"
}

func log4jConfig(file string) string {
	return `<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <File name="file" fileName="` + file + `" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="warn"/>
    <Logger name="org.apache.kafka.clients" level="warn"/>
    <Root level="info"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
`
}

// jvmArgs are the flags every java process of the cluster runs with: a
// small heap, so that a 2-core machine runs three brokers beside the tests.
func (k *ApacheKafka) jvmArgs(log4j string) []string {
	args := []string{"-Xmx256m", "-Xms64m", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
		"-Dlog4j2.configurationFile=" + log4j}
	return append(append(args, k.opts.JVMArgs...), "-cp", filepath.Join(k.jars, "*"))
}

// tool runs a Kafka command-line tool's main class to completion.
func (k *ApacheKafka) tool(ctx context.Context, class string, args ...string) (string, error) {
	log4j := filepath.Join(k.dir, "tools-log4j2.xml")
	if err := os.WriteFile(log4j, []byte(log4jConfig(filepath.Join(k.logDir, "tools.log"))), 0o644); err != nil {
		return "", fmt.Errorf("apache kafka: %w", err)
	}
	cmd := exec.CommandContext(ctx, k.java, append(append(k.jvmArgs(log4j), class), args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s%s", class, strings.Join(args, " "), err, stdout.String(), lastLines(stderr.String(), 20))
	}
	return stdout.String(), nil
}

// launch starts node's java process; k.mu is held.
func (k *ApacheKafka) launch(node *kafkaNode) error {
	out, err := os.OpenFile(filepath.Join(k.logDir, node.name+".out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("apache kafka: %w", err)
	}
	defer out.Close()
	args := append(k.jvmArgs(filepath.Join(node.dir, "log4j2.xml")), "kafka.Kafka", node.config)
	cmd := exec.Command(k.java, args...)
	cmd.Stdout, cmd.Stderr = out, out
	// Never outlive the process that started it, whatever kills it; a
	// later start reaps what this misses (reapAbandonedBrokers).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", node.name, err)
	}
	if err := os.WriteFile(filepath.Join(node.dir, "java.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return fmt.Errorf("apache kafka: %w", err)
	}
	node.cmd, node.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		cmd.Wait()
		close(done)
	}(node.done)
	return nil
}

// Addrs are the brokers' client listeners, host:port, in broker order.
func (k *ApacheKafka) Addrs() []string {
	return k.addrs(func(n *kafkaNode) int { return n.client })
}

// InternalAddrs are the brokers' plaintext listeners, which need neither
// TLS nor SASL; with neither option they are another way to the same
// brokers as Addrs.
func (k *ApacheKafka) InternalAddrs() []string {
	return k.addrs(func(n *kafkaNode) int { return n.internal })
}

func (k *ApacheKafka) addrs(port func(*kafkaNode) int) []string {
	var addrs []string
	for _, b := range k.brokers {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", port(b)))
	}
	return addrs
}

// PIDs are the process ids of the cluster's running java processes (the
// controller, if any, then the brokers), for a caller that accounts for
// their CPU or memory.
func (k *ApacheKafka) PIDs() []int {
	k.mu.Lock()
	defer k.mu.Unlock()
	var pids []int
	for _, node := range k.nodes() {
		if node.cmd != nil {
			pids = append(pids, node.cmd.Process.Pid)
		}
	}
	return pids
}

// Version is the broker's version, read from the name of its kafka_2.13
// jar (kafka_2.13-4.4.0.jar), or "unknown".
func (k *ApacheKafka) Version() string {
	jars, _ := filepath.Glob(filepath.Join(k.jars, "kafka_2.13-*.jar"))
	for _, jar := range jars {
		v := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(jar), "kafka_2.13-"), ".jar")
		if !strings.ContainsAny(v, "-") { // not -sources, -test
			return v
		}
	}
	return "unknown"
}

// CAFile is the PEM file of the CA that signed the brokers' certificates,
// or "" without TLS.
func (k *ApacheKafka) CAFile() string { return k.caFile }

// LogTail returns the last n lines of broker i's log and output.
func (k *ApacheKafka) LogTail(i, n int) string {
	if i < 0 || i >= len(k.brokers) {
		return ""
	}
	var b strings.Builder
	for _, suffix := range []string{".log", ".out"} {
		data, _ := os.ReadFile(filepath.Join(k.logDir, k.brokers[i].name+suffix))
		if len(data) > 0 {
			b.WriteString(lastLines(string(data), n) + "\n")
		}
	}
	return b.String()
}

// KillBroker sends SIGKILL to broker i and waits until it is gone.
func (k *ApacheKafka) KillBroker(i int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if i < 0 || i >= len(k.brokers) {
		return fmt.Errorf("kill broker %d: there are %d", i, len(k.brokers))
	}
	b := k.brokers[i]
	if b.cmd == nil {
		return fmt.Errorf("kill broker %d: not running", i)
	}
	b.cmd.Process.Kill()
	<-b.done
	b.cmd = nil
	return nil
}

// StartBroker starts broker i again after KillBroker and waits until it is
// registered and back in the ISR of every partition it replicates.
func (k *ApacheKafka) StartBroker(ctx context.Context, i int) error {
	k.mu.Lock()
	if i < 0 || i >= len(k.brokers) {
		k.mu.Unlock()
		return fmt.Errorf("start broker %d: there are %d", i, len(k.brokers))
	}
	b := k.brokers[i]
	if b.cmd != nil {
		k.mu.Unlock()
		return fmt.Errorf("start broker %d: already running", i)
	}
	err := k.launch(b)
	k.mu.Unlock()
	if err != nil {
		return err
	}
	return k.waitReady(ctx, fmt.Sprintf("broker %d to rejoin every ISR", i), func(m clusterMetadata) bool {
		return slices.Contains(m.brokers, b.id) && m.inAllISRs(b.id)
	})
}

// Close stops every process of the cluster and removes its directory
// (LogDir stays when it was given). It may be called more than once.
func (k *ApacheKafka) Close() {
	k.closeOnce.Do(func() {
		k.mu.Lock()
		for _, node := range k.nodes() {
			if node.cmd != nil {
				node.cmd.Process.Kill()
				<-node.done
				node.cmd = nil
			}
		}
		k.mu.Unlock()
		os.RemoveAll(k.dir)
	})
}

// exited names a node whose process ended although nobody killed it.
func (k *ApacheKafka) exited() (*kafkaNode, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, node := range k.nodes() {
		if node.cmd == nil {
			continue
		}
		select {
		case <-node.done:
			return node, true
		default:
		}
	}
	return nil, false
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
