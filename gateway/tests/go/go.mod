module flint.dev/gateway-tests

go 1.19
