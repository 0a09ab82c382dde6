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
plot 'closed.dat' using 8:9:10:xtic(1) title 'bidistreamd' lc 1, 'closed.dat' using 17:18:19:xtic(1) title 'grpc-cpp-cb' lc 2, 'closed.dat' using 26:27:28:xtic(1) title 'grpc-cpp-async' lc 3, 'closed.dat' using 35:36:37:xtic(1) title 'grpc-go' lc 4, 'closed.dat' using 44:45:46:xtic(1) title 'raw' lc 5
