// gohello: a static Go program (CGO_ENABLED=0) for Flint's tests:
// goroutines over several threads, timers, a channel, a signal the
// program sends itself, and a file.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	fmt.Println("hello from go", os.Args[1:])
	var wg sync.WaitGroup
	sums := make([]int, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < 1000000; j++ {
				sums[i] += j % (i + 1)
			}
		}(i)
	}
	wg.Wait()
	fmt.Println("goroutines", sums[7])
	t0 := time.Now()
	timer := time.NewTimer(20 * time.Millisecond)
	<-timer.C
	fmt.Println("timer", time.Since(t0) >= 20*time.Millisecond)
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1)
	syscall.Kill(os.Getpid(), syscall.SIGUSR1)
	select {
	case s := <-c:
		fmt.Println("signal", s)
	case <-time.After(5 * time.Second):
		fmt.Println("no signal")
	}
	if err := os.WriteFile("/tmp/go.txt", []byte("go data"), 0o644); err != nil {
		fmt.Println("write:", err)
	}
	b, err := os.ReadFile("/tmp/go.txt")
	fmt.Println("file", string(b), err)
}
