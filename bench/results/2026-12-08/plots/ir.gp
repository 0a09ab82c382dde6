set terminal svg size 900,480 font 'sans,11'
set output 'ir.svg'
set title 'Server instructions per message (callgrind Ir, idle run subtracted)'
set ylabel 'Ir / message'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.7 border -1
set logscale y
set yrange [10:*]
set grid ytics
set key outside right
plot 'ir.dat' using 2:xtic(1) title 'bidistreamd' lc 1, 'ir.dat' using 3:xtic(1) title 'grpc-cpp-cb' lc 2, 'ir.dat' using 4:xtic(1) title 'grpc-cpp-async' lc 3, 'ir.dat' using 5:xtic(1) title 'raw' lc 4
