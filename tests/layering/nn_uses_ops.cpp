// Compiled against the nn part's include view: ops is a layer nn may use, so this builds (the control case).
#include "ds/ops/ops.h"

int layering_probe_allowed() { return 0; }
