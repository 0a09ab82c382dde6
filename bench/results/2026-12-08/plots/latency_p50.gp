set terminal svg size 1000,520 font 'sans,11'
set output 'latency_p50.svg'
set title 'p50 latency per scenario (median, min–max)'
set ylabel 'µs'
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.7 border -1
set logscale y
set yrange [10:*]
set grid ytics
set key outside right
set xtics rotate by -20
plot 'closed.dat' using 5:6:7:xtic(1) title 'bidistreamd' lc 1, 'closed.dat' using 14:15:16:xtic(1) title 'grpc-cpp-cb' lc 2, 'closed.dat' using 23:24:25:xtic(1) title 'grpc-cpp-async' lc 3, 'closed.dat' using 32:33:34:xtic(1) title 'grpc-go' lc 4, 'closed.dat' using 41:42:43:xtic(1) title 'raw' lc 5
