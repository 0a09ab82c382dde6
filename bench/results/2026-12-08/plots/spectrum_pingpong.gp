set terminal svg size 900,520 font 'sans,11'
set output 'spectrum_pingpong.svg'
set title 'Latency by percentile: pingpong (median over repetitions)'
set xlabel 'percentile'
set ylabel 'latency (µs)'
set logscale xy
set xtics ("0" 1, "90" 10, "99" 100, "99.9" 1000, "99.99" 10000, "99.999" 100000, "max" 1000000)
set grid
set key outside right
plot 'spectrum_pingpong_bidistreamd.dat' using 2:3 with linespoints lw 2 lc 1 title 'bidistreamd', 'spectrum_pingpong_grpc-cpp-cb.dat' using 2:3 with linespoints lw 2 lc 2 title 'grpc-cpp-cb', 'spectrum_pingpong_grpc-cpp-async.dat' using 2:3 with linespoints lw 2 lc 3 title 'grpc-cpp-async', 'spectrum_pingpong_grpc-go.dat' using 2:3 with linespoints lw 2 lc 4 title 'grpc-go', 'spectrum_pingpong_raw.dat' using 2:3 with linespoints lw 2 lc 5 title 'raw'
