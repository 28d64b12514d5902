// A program that uses the core library alone, linked with every library on its link line kept
// (--no-as-needed): the libraries it needs are those the eplb target hands to every consumer.
#include "eplb/algorithm.h"

int main() { return eplb::MakeBalancer("swift").ok() ? 0 : 1; }
