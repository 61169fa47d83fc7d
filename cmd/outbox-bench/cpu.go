package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// CPUUse is where the machine's CPU went during a run, in cores (CPU
// seconds per second of the run).
type CPUUse struct {
	Reader   float64 `json:"reader"`   // the relay process or pg_recvlogical (the poller runs in Bench)
	Postgres float64 `json:"postgres"` // every process of the cluster: backends, walsenders, WAL writer
	Bench    float64 `json:"bench"`    // this process: producers, consumer, poller, and kfake when it is the broker
	// Broker is the broker's own processes (the Apache Kafka JVM); 0 with
	// kfake, which runs inside this process.
	Broker float64 `json:"broker"`
	// Other is everything else on the machine: other people's work.
	Other float64 `json:"other"`
}

// String renders the use as "reader / Postgres / bench / broker / other".
func (u CPUUse) String() string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 2, 64) }
	return f(u.Reader) + " / " + f(u.Postgres) + " / " + f(u.Bench) + " / " + f(u.Broker) + " / " + f(u.Other)
}

// cpuTracker follows the CPU time of the cluster's processes during a run.
// Backends and walsenders exit during runs (a reader disconnects, producers
// close their connections) and take their CPU counters with them, so it
// samples every process of the cluster until finish and keeps the last
// value seen of each.
type cpuTracker struct {
	b       *bench
	started time.Time
	self0   float64
	busy0   cpuTimes
	first   map[int]float64 // CPU of the processes alive at the start
	last    map[int]float64
	broker0 map[int]float64 // CPU of the broker's processes at the start
	stop    chan struct{}
	done    chan struct{}
}

func (b *bench) trackCPU() *cpuTracker {
	t := &cpuTracker{b: b, started: time.Now(), self0: selfCPU(), busy0: machineCPU(),
		first: b.clusterCPU(), broker0: b.brokerCPU(), stop: make(chan struct{}), done: make(chan struct{})}
	t.last = map[int]float64{}
	go func() {
		defer close(t.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			for pid, cpu := range b.clusterCPU() {
				t.last[pid] = cpu
			}
			select {
			case <-tick.C:
			case <-t.stop:
				return
			}
		}
	}()
	return t
}

// finish stops tracking and splits the machine's CPU since the start:
// readerCPU seconds were the reader's.
func (t *cpuTracker) finish(readerCPU float64) CPUUse {
	close(t.stop)
	<-t.done
	for pid, cpu := range t.b.clusterCPU() {
		t.last[pid] = cpu
	}
	seconds := time.Since(t.started).Seconds()
	var postgres float64
	for pid, cpu := range t.last {
		postgres += cpu - t.first[pid] // a process started during the run had 0
	}
	var broker float64
	for pid, cpu := range t.b.brokerCPU() {
		if cpu0, ok := t.broker0[pid]; ok {
			broker += cpu - cpu0
		}
	}
	now := machineCPU()
	u := CPUUse{
		Reader:   readerCPU / seconds,
		Postgres: postgres / seconds,
		Bench:    (selfCPU() - t.self0) / seconds,
		Broker:   broker / seconds,
	}
	u.Other = max(0, (now.busy-t.busy0.busy)/clockTicks/seconds-u.Reader-u.Postgres-u.Bench-u.Broker)
	return u
}

// brokerCPU returns the CPU seconds of the broker's processes, by pid.
func (b *bench) brokerCPU() map[int]float64 {
	cpu := map[int]float64{}
	if b.broker == nil {
		return cpu
	}
	for _, pid := range b.broker.pids() {
		if c := processCPU(pid); c >= 0 {
			cpu[pid] = c
		}
	}
	return cpu
}

// clusterCPU returns the CPU seconds of the postmaster and each of its
// children, by pid.
func (b *bench) clusterCPU() map[int]float64 {
	cpu := map[int]float64{}
	pm := b.postmasterPID()
	if pm <= 0 {
		return cpu
	}
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range paths {
		raw, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(raw), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(raw[i+1:]))
		if len(f) < 13 {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		if ppid, _ := strconv.Atoi(f[1]); pid != pm && ppid != pm {
			continue
		}
		utime, _ := strconv.ParseFloat(f[11], 64)
		stime, _ := strconv.ParseFloat(f[12], 64)
		cpu[pid] = (utime + stime) / clockTicks
	}
	return cpu
}

// postmasterPID reads the first line of the cluster's postmaster.pid.
func (b *bench) postmasterPID() int {
	raw, err := os.ReadFile(filepath.Join(b.pg.Dir(), "data", "postmaster.pid"))
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}
