#include "eplb/formats.h"
