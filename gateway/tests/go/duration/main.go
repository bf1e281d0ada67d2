// Reads one string per line and prints how Go's time.ParseDuration (what
// Knative's annotation validation calls) reads it: "ok NANOSECONDS" or
// "err". The gateway's tests compare Flint's parser with it.
package main

import (
	"bufio"
	"fmt"
	"os"
	"time"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		d, err := time.ParseDuration(in.Text())
		if err != nil {
			fmt.Println("err")
		} else {
			fmt.Printf("ok %d\n", d.Nanoseconds())
		}
	}
}
