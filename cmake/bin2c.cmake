# cmake -DIN=file -DOUT=file.c -DSYMBOL=name -P bin2c.cmake
# Writes a C file defining `const unsigned char SYMBOL[]` with IN's bytes and
# `const unsigned long SYMBOL_len`. Used to embed the built-in services'
# descriptor set (proto/CMakeLists.txt) without xxd.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR bytes "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){16})" "\\1\n" body "${body}")
file(WRITE ${OUT} "/* Generated from ${IN} by cmake/bin2c.cmake: do not edit. */\n"
  "const unsigned char ${SYMBOL}[] = {\n${body}\n};\n"
  "const unsigned long ${SYMBOL}_len = ${bytes};\n")
