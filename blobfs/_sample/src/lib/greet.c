#include "greet.h"

void greet(FILE *out, const char *name) {
    fprintf(out, "hello, %s\n", name);
}
