module archwatch/bench/loadgen

go 1.22
