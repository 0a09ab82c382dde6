set terminal svg size 1000,520 font 'sans,11'
set output 'latency_p99.svg'
set title 'p99 latency per scenario (median, min–max)'
set ylabel 'µs'
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.7 border -1
set logscale y
set yrange [10:*]
set grid ytics
set key outside right
set xtics rotate by -20
plot 'closed.dat' using 8:9:10:xtic(1) title 'bidistreamd' lc 1
