#include <stdio.h>

#include "lib/greet.h"

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "world";
    greet(stdout, name);
    return 0;
}
