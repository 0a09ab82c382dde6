set terminal svg size 900,520 font 'sans,11'
set output 'spectrum_many.svg'
set title 'Latency by percentile: many (median over repetitions)'
set xlabel 'percentile'
set ylabel 'latency (µs)'
set logscale xy
set xtics ("0" 1, "90" 10, "99" 100, "99.9" 1000, "99.99" 10000, "99.999" 100000, "max" 1000000)
set grid
set key outside right
plot 'spectrum_many_bidistreamd.dat' using 2:3 with linespoints lw 2 lc 1 title 'bidistreamd', 'spectrum_many_grpc-cpp-cb.dat' using 2:3 with linespoints lw 2 lc 2 title 'grpc-cpp-cb', 'spectrum_many_grpc-cpp-async.dat' using 2:3 with linespoints lw 2 lc 3 title 'grpc-cpp-async', 'spectrum_many_grpc-go.dat' using 2:3 with linespoints lw 2 lc 4 title 'grpc-go', 'spectrum_many_raw.dat' using 2:3 with linespoints lw 2 lc 5 title 'raw'
