module flinttests

go 1.19
