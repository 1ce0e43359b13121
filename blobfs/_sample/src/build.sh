#!/bin/sh
# Build the sample program (not part of blobfs; sample content only).
set -eu
cc -Wall -O2 -o hello main.c lib/greet.c
