// SHA-256 and CRC-64 throughput of a Go toolchain's standard library on this CPU, in MB/s, one core.
//
// The engines that pull images (dockerd, podman, skopeo, containerd) hash every layer with Go's crypto/sha256:
// the compressed blob against the manifest, the uncompressed stream against the config's diff_ids. Run with the
// toolchain an engine was built with (`podman version`, `docker version` print it) to see what that costs here.
// bench/cold_start.py runs it with every toolchain it finds; by hand:
//
//	GO111MODULE=off GOTOOLCHAIN=local GOCACHE=$(mktemp -d) /usr/lib/go-1.19/bin/go run bench/gohash/main.go
package main

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"hash/crc64"
	"runtime"
	"time"
)

func rate(h hash.Hash, buf []byte, n int) float64 {
	t0 := time.Now()
	for i := 0; i < n; i++ {
		h.Write(buf)
	}
	h.Sum(nil)
	return float64(n) * float64(len(buf)) / time.Since(t0).Seconds() / 1e6
}

func main() {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>8)
	}
	const n = 2048 // 2 GiB through each hash
	fmt.Printf("{\"go\": %q, \"sha256_mb_s\": %.0f, \"crc64_mb_s\": %.0f}\n", runtime.Version(),
		rate(sha256.New(), buf, n), rate(crc64.New(crc64.MakeTable(crc64.ISO)), buf, n))
}
