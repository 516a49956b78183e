# Cross-compiling the Windows agent on Debian 12 with mingw-w64 (posix threads: std::thread,
# std::mutex and Asio's threads need them). Used by scripts/build-windows.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)
set(TOCSIN_MINGW_TRIPLET x86_64-w64-mingw32)
set(CMAKE_C_COMPILER ${TOCSIN_MINGW_TRIPLET}-gcc-posix)
set(CMAKE_CXX_COMPILER ${TOCSIN_MINGW_TRIPLET}-g++-posix)
set(CMAKE_RC_COMPILER ${TOCSIN_MINGW_TRIPLET}-windres)
# Libraries and packages come only from the mingw sysroot and our own third-party prefix (built
# from Debian sources); never from the host's /usr.
set(CMAKE_FIND_ROOT_PATH /usr/${TOCSIN_MINGW_TRIPLET} ${TOCSIN_WIN_PREFIX})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
