/* bidistream.h — the umbrella header of libbidistream. */
#ifndef BIDISTREAM_H
#define BIDISTREAM_H
#include "bidistream/status.h"
#endif
