# Cross-compiling for 64-bit ARM Linux with Debian's cross toolchain and multiarch -dev packages
# (docs/PORTING.md; deploy/install-deps.sh installs them with FL_CROSS=1):
#   gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user, and the :arm64 packages
#   libssl-dev, libprotobuf-c-dev, zlib1g-dev.
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-aarch64.cmake -DFL_LEAN=ON \
#         -DFL_MINI_CRITERION=ON   # the unit tests' runner (tests/cross/mini-criterion)
# Only the lean client cross-builds (FL_LEAN=ON): the coordinator stays on the build machine.
# protoc-c is the host's (programs are searched on the host only); the tests run under
# qemu-aarch64 through CMAKE_CROSSCOMPILING_EMULATOR, so `ctest` works as in a native tree.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(FL_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${FL_CROSS_TRIPLE}-gcc)

# Debian's cross gcc already searches the multiarch directories (/usr/include/aarch64-linux-gnu,
# /usr/lib/aarch64-linux-gnu) besides its own /usr/aarch64-linux-gnu.
set(CMAKE_FIND_ROOT_PATH /usr/${FL_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# pkg-config reads the arm64 .pc files only, never the build machine's.
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/${FL_CROSS_TRIPLE}/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")

# -L /: the multiarch loader /lib/ld-linux-aarch64.so.1 of libc6:arm64 (the :arm64 -dev
# packages pull it in), which loads that package's libc and the multiarch libcrypto and
# protobuf-c. Not -L /usr/aarch64-linux-gnu: that loader is libc6-arm64-cross's, a different
# glibc build, yet it too finds libc.so.6 in /lib/aarch64-linux-gnu; the mismatched pair runs
# until a program forks, and then the child hangs for ever (every unit test forks).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/)
