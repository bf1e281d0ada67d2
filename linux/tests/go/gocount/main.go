// gocount: an HTTP server on $PORT that keeps state in memory and in
// open files, for the template tests: /n counts requests, /uptime is
// how long it has run (Go's monotonic clock), /line reads the next line
// of a file it opened at start, /ticks how often a ticker goroutine has
// fired, /say writes its body to stdout, /quit exits.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

func main() {
	start := time.Now()
	var n, ticks int64
	f, err := os.Open("/lines.txt")
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	lines := bufio.NewReaderSize(f, 16)
	go func() {
		for range time.Tick(5 * time.Millisecond) {
			atomic.AddInt64(&ticks, 1)
		}
	}()
	http.HandleFunc("/n", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d", atomic.AddInt64(&n, 1))
	})
	http.HandleFunc("/uptime", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d", time.Since(start).Nanoseconds())
	})
	http.HandleFunc("/line", func(w http.ResponseWriter, r *http.Request) {
		l, _ := lines.ReadString('\n')
		fmt.Fprint(w, l)
	})
	http.HandleFunc("/ticks", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d", atomic.LoadInt64(&ticks))
	})
	http.HandleFunc("/say", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Println(string(body))
	})
	http.HandleFunc("/quit", func(w http.ResponseWriter, r *http.Request) {
		go func() {
			time.Sleep(20 * time.Millisecond)
			os.Exit(7)
		}()
	})
	fmt.Println("listening on", os.Getenv("PORT"))
	if err := http.ListenAndServe(":"+os.Getenv("PORT"), nil); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
}
