// Compiled against the nn part's include view: the engine is above nn, so this include must fail to build.
#include "ds/engine/engine.h"

int layering_probe_forbidden() { return 0; }
