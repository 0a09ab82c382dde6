set terminal svg size 1000,520 font 'sans,11'
set output 'throughput.svg'
set title 'Throughput per scenario (median, min–max), server on one core'
set ylabel 'msg/s'
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.7 border -1
set logscale y
set yrange [1000:*]
set grid ytics
set key outside right
set xtics rotate by -20
plot 'closed.dat' using 2:3:4:xtic(1) title 'bidistreamd' lc 1, 'closed.dat' using 11:12:13:xtic(1) title 'grpc-cpp-cb' lc 2, 'closed.dat' using 20:21:22:xtic(1) title 'grpc-cpp-async' lc 3, 'closed.dat' using 29:30:31:xtic(1) title 'grpc-go' lc 4, 'closed.dat' using 38:39:40:xtic(1) title 'raw' lc 5
