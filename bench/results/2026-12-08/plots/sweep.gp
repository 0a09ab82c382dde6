set terminal svg size 900,540 font 'sans,11'
set output 'sweep.svg'
set title "Open-loop latency vs offered load (% of each server's own peak)"
set xlabel 'offered load (msg/s)'
set ylabel 'latency from intended send time (µs)'
set logscale xy
set grid
set key outside right
plot 'sweep_bidistreamd.dat' using 2:4 with linespoints lw 2 lc 1 title 'bidistreamd p99', 'sweep_bidistreamd.dat' using 2:3 with linespoints dt 2 lc 1 title 'bidistreamd p50', 'sweep_grpc-cpp-cb.dat' using 2:4 with linespoints lw 2 lc 2 title 'grpc-cpp-cb p99', 'sweep_grpc-cpp-cb.dat' using 2:3 with linespoints dt 2 lc 2 title 'grpc-cpp-cb p50', 'sweep_grpc-cpp-async.dat' using 2:4 with linespoints lw 2 lc 3 title 'grpc-cpp-async p99', 'sweep_grpc-cpp-async.dat' using 2:3 with linespoints dt 2 lc 3 title 'grpc-cpp-async p50', 'sweep_grpc-go.dat' using 2:4 with linespoints lw 2 lc 4 title 'grpc-go p99', 'sweep_grpc-go.dat' using 2:3 with linespoints dt 2 lc 4 title 'grpc-go p50', 'sweep_raw.dat' using 2:4 with linespoints lw 2 lc 5 title 'raw p99', 'sweep_raw.dat' using 2:3 with linespoints dt 2 lc 5 title 'raw p50'
