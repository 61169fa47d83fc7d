package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// cpuProfiler takes the relay's CPU profile in one-second pieces
// (/debug/pprof/profile?seconds=1, served with OUTBOX_RELAY_PPROF=true)
// for as long as a run lasts: a single profile needs its length up front,
// and a drain's length is what is being measured.
type cpuProfiler struct {
	relay *relayProcess
	dir   string
	name  string
	stop  chan struct{}
	done  chan []string
}

func startCPUProfiler(ctx context.Context, relay *relayProcess, dir, name string) *cpuProfiler {
	p := &cpuProfiler{relay: relay, dir: dir, name: name, stop: make(chan struct{}), done: make(chan []string, 1)}
	os.MkdirAll(dir, 0o755)
	go func() {
		var pieces []string
		// The piece in progress when finish is called completes, so the
		// end of the run is in the profile too.
		for i := 0; i < 900 && ctx.Err() == nil; i++ {
			select {
			case <-p.stop:
				p.done <- pieces
				return
			default:
			}
			file := filepath.Join(dir, fmt.Sprintf("%s-cpu-%03d.pb.gz", name, i))
			if err := relay.fetch(ctx, "/debug/pprof/profile?seconds=1", file); err != nil {
				os.Remove(file)
				sleep(ctx, 10*time.Millisecond) // HTTP not up yet
				continue
			}
			pieces = append(pieces, file)
		}
		p.done <- pieces
	}()
	return p
}

// finish stops profiling, merges the CPU pieces into <name>-cpu.pb.gz,
// saves the allocation and heap profiles, and writes `go tool pprof -top`
// summaries next to them. It returns the profile files.
func (p *cpuProfiler) finish(ctx context.Context) []string {
	close(p.stop)
	pieces := <-p.done
	var files []string
	cpu := filepath.Join(p.dir, p.name+"-cpu.pb.gz")
	goBin := goTool()
	if len(pieces) > 0 {
		args := append([]string{"tool", "pprof", "-proto", "-output", cpu}, pieces...)
		if out, err := exec.CommandContext(ctx, goBin, args...).CombinedOutput(); err == nil {
			for _, f := range pieces {
				os.Remove(f)
			}
			files = append(files, cpu)
		} else {
			fmt.Fprintf(os.Stderr, "merge CPU profiles: %v\n%s", err, out)
			files = append(files, pieces...)
		}
	}
	allocs := filepath.Join(p.dir, p.name+"-allocs.pb.gz")
	if err := p.relay.fetch(ctx, "/debug/pprof/allocs", allocs); err == nil {
		files = append(files, allocs)
	}
	heap := filepath.Join(p.dir, p.name+"-heap.pb.gz")
	if err := p.relay.fetch(ctx, "/debug/pprof/heap", heap); err == nil {
		files = append(files, heap)
	}
	for _, f := range files {
		args := []string{"tool", "pprof", "-top", "-nodecount=30"}
		if strings.HasSuffix(f, "-allocs.pb.gz") {
			args = append(args, "-sample_index=alloc_space")
		}
		out, err := exec.CommandContext(ctx, goBin, append(args, f)...).CombinedOutput()
		if err == nil {
			os.WriteFile(strings.TrimSuffix(f, ".pb.gz")+"-top.txt", out, 0o644)
		}
	}
	return files
}

// goTool is the go command that runs pprof.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}
