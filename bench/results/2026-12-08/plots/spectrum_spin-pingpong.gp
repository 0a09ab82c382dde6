set terminal svg size 900,520 font 'sans,11'
set output 'spectrum_spin-pingpong.svg'
set title 'Latency by percentile: spin-pingpong (median over repetitions)'
set xlabel 'percentile'
set ylabel 'latency (µs)'
set logscale xy
set xtics ("0" 1, "90" 10, "99" 100, "99.9" 1000, "99.99" 10000, "99.999" 100000, "max" 1000000)
set grid
set key outside right
plot 'spectrum_spin-pingpong_bidistreamd-spin.dat' using 2:3 with linespoints lw 2 lc 2 title 'bidistreamd-spin', 'spectrum_spin-pingpong_raw-spin.dat' using 2:3 with linespoints lw 2 lc 7 title 'raw-spin'
