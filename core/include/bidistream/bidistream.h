/* bidistream.h — the umbrella header of libbidistream. */
#ifndef BIDISTREAM_H
#define BIDISTREAM_H
#include "bidistream/status.h"
#include "bidistream/options.h"
#include "bidistream/pipeline.h"
#include "bidistream/server.h"
#endif
