#!/usr/bin/env bash
# Packs what a lent GPU machine lacks into .gpu/ (git-ignored; the device tool carries it):
# pycocotools for its Python 3.12, a trimmed PySide6 (Core, Gui, Widgets, Charts, Test, offscreen
# platform: the device image has no Qt), pytest-qt, and a copy of ../shared/data/nuclei.
# Then on the device: bench/gpu_device.sh (unpacks it, adds the missing system libraries, runs the suite).
set -euo pipefail
cd "$(dirname "$0")/.."
SP=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf .gpu && mkdir -p .gpu/whl .gpu/stage/site
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl pycocotools==2.0.11
(cd .gpu/stage/site && python3 -m zipfile -e ../../whl/pycocotools-*.whl .)
cp -r "$SP/pytestqt" "$SP"/pytest_qt-*.dist-info "$SP/shiboken6" .gpu/stage/site/
D=.gpu/stage/site/PySide6
mkdir -p "$D/Qt/lib" "$D/Qt/plugins/platforms"
cp "$SP"/PySide6/*.py "$D/"
for m in QtCore QtGui QtWidgets QtCharts QtTest QtOpenGL QtOpenGLWidgets QtDBus; do
  cp "$SP/PySide6/$m.abi3.so" "$D/"
done
cp -P "$SP"/PySide6/libpyside6*.so* "$D/" 2>/dev/null || true
cp -r "$SP/PySide6/support" "$D/" 2>/dev/null || true
for l in Core Gui Widgets Charts Test OpenGL OpenGLWidgets DBus; do
  cp -P "$SP"/PySide6/Qt/lib/libQt6$l.so* "$D/Qt/lib/"
done
cp -P "$SP"/PySide6/Qt/lib/libicu*.so* "$D/Qt/lib/"
cp "$SP/PySide6/Qt/plugins/platforms/libqoffscreen.so" "$D/Qt/plugins/platforms/"
# System libraries Qt's Gui links to; the device copies in only those its image lacks.
mkdir -p .gpu/stage/site/_syslibs
for lib in libEGL.so.1 libGL.so.1 libGLX.so.0 libGLdispatch.so.0 libOpenGL.so.0 libX11.so.6 libXau.so.6 \
    libXdmcp.so.6 libxcb.so.1 libxkbcommon.so.0 libfontconfig.so.1 libfreetype.so.6 libpng16.so.16 \
    libbrotlicommon.so.1 libbrotlidec.so.1 libexpat.so.1 libglib-2.0.so.0 libgthread-2.0.so.0 \
    libpcre2-8.so.0 libdbus-1.so.3 libsystemd.so.0 libcap.so.2 libgcrypt.so.20 libgpg-error.so.0 \
    liblz4.so.1 liblzma.so.5 libzstd.so.1 libbsd.so.0 libmd.so.0; do
  src=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ && !f {print $NF; f = 1}')  # no early exit: ldconfig would die of SIGPIPE under pipefail
  if [ -n "$src" ]; then cp -L "$src" .gpu/stage/site/_syslibs/; fi
done
tar -C .gpu/stage -cJf .gpu/site.tar.xz site
rm -rf .gpu/stage .gpu/whl
cp -r ../shared/data/nuclei .gpu/nuclei
du -sh .gpu/*
