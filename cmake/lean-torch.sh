#!/bin/sh
# Lean LibTorch copies for attrace-core (docs/performance.md, "Process start").
#
#   lean-torch.sh make  OUT_DIR LIB...      copies of each LIB without the NEEDED entries it takes no symbol from
#   lean-torch.sh check OUT_DIR PROGRAM     PROGRAM binds every symbol to the same library with and without OUT_DIR
#   lean-torch.sh drop  OUT_DIR             removes the copies (programs then load the system libraries)
#
# Debian's libtorch_cpu.so lists ~60 libraries as NEEDED (OpenCV, FFmpeg, GDAL through OpenCV,
# LevelDB, ZeroMQ, ...) that it references no symbol of; loading and relocating them and their
# own dependencies (~250 more) and running their initializers costs ~0.2 s at every start of
# every program that links LibTorch. `make` writes, for each LIB with such entries, a copy named
# by its SONAME into OUT_DIR with those entries removed (patchelf --remove-needed); nothing else
# in the file changes. A NEEDED entry is kept when any symbol LIB leaves undefined is defined by
# that library (nm -D), so the rule is conservative. `check` then proves it for the program as
# built: with LD_BIND_NOW every symbol of every library is resolved at start, and LD_DEBUG=bindings
# lists where each went; the two lists (full libraries via LD_LIBRARY_PATH, lean copies via the
# program's RUNPATH) must agree on every (library, symbol) -> library binding made by a library
# loaded in both, or `check` fails (the build then runs `drop`, and the program loads the system
# libraries as without this step).
set -eu

usage() {
  echo "usage: $0 make OUT_DIR LIB... | check OUT_DIR PROGRAM" >&2
  exit 2
}

needed() { patchelf --print-needed "$1"; }
soname() { patchelf --print-soname "$1"; }

# Defined dynamic symbols of a library (name@version or name), one per line, sorted.
defined() { nm -D --defined-only "$1" 2>/dev/null | awk 'NF >= 3 { print $3 }' | sed 's/@@*/@/' | sort -u; }
undefined() { nm -D --undefined-only "$1" 2>/dev/null | awk '{ print $NF }' | sed 's/@@*/@/' | sort -u; }

# The file the loader would open for a NEEDED name: what ldd lists for LIB.
resolve() { ldd "$1" | awk -v n="$2" '$1 == n && $3 ~ /^\// { print $3; exit }'; }

cmd_make() {
  out="$1"
  shift
  mkdir -p "$out"
  rm -f "$out"/*.so* "$out"/removed.txt "$out"/sources.txt
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  for lib in "$@"; do
    [ -f "$lib" ] || continue
    real=$(readlink -f "$lib")
    name=$(soname "$real")
    [ -n "$name" ] || continue
    [ -f "$out/$name" ] && continue
    undefined "$real" | sed 's/@.*//' | sort -u >"$tmp/undef"
    remove=""
    for n in $(needed "$real"); do
      case "$n" in libtorch* | libc10*) continue ;; esac  # LibTorch's own parts stay, used or not
      path=$(resolve "$real" "$n")
      [ -n "$path" ] || continue
      defined "$path" | sed 's/@.*//' | sort -u >"$tmp/def"
      if [ -z "$(comm -12 "$tmp/undef" "$tmp/def" | head -n 1)" ]; then remove="$remove $n"; fi
    done
    [ -n "$remove" ] || continue
    cp "$real" "$out/$name.tmp"
    for n in $remove; do patchelf --remove-needed "$n" "$out/$name.tmp"; done
    mv "$out/$name.tmp" "$out/$name"
    echo "$name:$remove" >>"$out/removed.txt"
    echo "$(dirname "$real")" >>"$out/sources.txt"
    set -- $remove
    echo "lean-torch: $name without $# unused NEEDED entries"
  done
}

# "from<TAB>symbol<TAB>to" for every binding in LD_DEBUG output files, library paths cut to their
# file names (the lean copies live in another folder under the same names).
bindings() {
  cat "$@" | sed -n "s|.*binding file \([^ ]*\) \[[0-9]*\] to \([^ ]*\) \[[0-9]*\]: [a-z]* symbol \`\([^']*\)'.*|\1	\3	\2|p" |
    awk -F'\t' '{ n = split($1, a, "/"); m = split($3, b, "/"); print a[n] "\t" $2 "\t" b[m] }' | sort -u
}

cmd_check() {
  out="$1"
  prog="$2"
  [ -f "$out/removed.txt" ] || exit 0  # nothing was made lean
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # The program must load the copies (RUNPATH); the full libraries come from the folders the
  # copies were made from, put ahead of RUNPATH with LD_LIBRARY_PATH.
  for f in "$out"/*.so*; do
    n=$(basename "$f")
    p=$(ldd "$prog" 2>/dev/null | awk -v n="$n" '$1 == n { print $3 }')
    [ "$p" = "$out/$n" ] || [ "$(readlink -f "$p")" = "$(readlink -f "$out/$n")" ] || fail "$out" "$prog loads $n from '$p', not from $out"
  done
  sys=$(sort -u "$out/sources.txt" | tr '\n' ':')
  if ! LD_BIND_NOW=1 LD_DEBUG=bindings LD_DEBUG_OUTPUT="$tmp/full" LD_LIBRARY_PATH="${sys%:}" "$prog" version >/dev/null 2>"$tmp/full.err" ||
    ! LD_BIND_NOW=1 LD_DEBUG=bindings LD_DEBUG_OUTPUT="$tmp/lean" "$prog" version >/dev/null 2>"$tmp/lean.err"; then
    cat "$tmp"/*.err >&2
    fail "$out" "$prog version failed"
  fi
  bindings "$tmp"/full.* >"$tmp/full.all"
  bindings "$tmp"/lean.* >"$tmp/lean.all"
  # dlsym(RTLD_DEFAULT, ...) lookups made by initializers are printed as bindings of the program
  # itself: only symbols in the program's own dynamic table are its bindings.
  nm -D "$prog" | awk '{ print $NF }' | sed 's/@.*//' | sort -u >"$tmp/prog.syms"
  p=$(basename "$prog")
  for f in full lean; do
    awk -F'\t' -v p="$p" 'NR == FNR { own[$1] = 1; next } $1 != p || ($2 in own)' "$tmp/prog.syms" "$tmp/$f.all" >"$tmp/$f.txt"
  done
  cut -f1 "$tmp/lean.txt" | sort -u >"$tmp/lean.libs"
  # Bindings made by libraries still loaded in the lean start must be identical, except that a
  # vague-linkage definition (an inline function or template instance, weak in every library that
  # has it: one definition by the C++ one-definition rule) found first in a library that is no
  # longer loaded is found in the next one that has it.
  awk -F'\t' 'NR == FNR { keep[$1] = 1; next } ($1 in keep)' "$tmp/lean.libs" "$tmp/full.txt" >"$tmp/full.kept"
  diff "$tmp/full.kept" "$tmp/lean.txt" | sed -n 's/^[<>] //p' | awk -F'\t' '{ print $1 "\t" $2 }' | sort -u >"$tmp/differ"
  bad=0
  while IFS="$(printf '\t')" read -r from sym; do
    was=$(awk -F'\t' -v f="$from" -v s="$sym" '$1 == f && $2 == s { print $3 }' "$tmp/full.kept")
    now=$(awk -F'\t' -v f="$from" -v s="$sym" '$1 == f && $2 == s { print $3 }' "$tmp/lean.txt")
    ok=0
    if [ -n "$was" ] && [ -n "$now" ] && ! grep -qx "$was" "$tmp/lean.libs"; then
      wp=$(grep -h "to [^ ]*/$was \[" "$tmp"/full.[0-9]* | sed -n 's/.* to \([^ ]*\) \[.*/\1/p' | head -n 1)
      np=$(grep -h "to [^ ]*/$now \[" "$tmp"/lean.[0-9]* | sed -n 's/.* to \([^ ]*\) \[.*/\1/p' | head -n 1)
      wt=$(nm -D --defined-only "$wp" 2>/dev/null | awk -v s="$sym" '{ n = $3; sub(/@.*/, "", n) } n == s { print $2; exit }')
      nt=$(nm -D --defined-only "$np" 2>/dev/null | awk -v s="$sym" '{ n = $3; sub(/@.*/, "", n) } n == s { print $2; exit }')
      case "$wt$nt" in [WVu][WVu]) ok=1 ;; esac
    fi
    if [ $ok = 1 ]; then
      echo "lean-torch: $from: $sym (weak in both) now from $now instead of $was"
    else
      echo "lean-torch: $from: $sym bound to '$was' with the system libraries, '$now' with the lean copies" >&2
      bad=1
    fi
  done <"$tmp/differ"
  [ $bad = 0 ] || fail "$out" "symbol bindings differ between the full and the lean libraries"
  full_libs=$(cut -f1 "$tmp/full.txt" | sort -u | wc -l)
  echo "lean-torch: $p: $(wc -l <"$tmp/lean.txt") symbol bindings checked, $(wc -l <"$tmp/differ") differing only in the copy of a weak definition; $(wc -l <"$tmp/lean.libs") libraries bind symbols at start instead of $full_libs"
}

fail() {
  echo "lean-torch: $2" >&2
  exit 1
}

cmd_drop() {
  rm -f "$1"/*.so* "$1"/removed.txt "$1"/sources.txt
  echo "lean-torch: WARNING: removed the lean copies in $1; attrace-core loads the system libraries" >&2
}

[ $# -ge 2 ] || usage
[ "$1" = drop ] && { cmd_drop "$2"; exit 0; }
command -v patchelf >/dev/null 2>&1 || {
  echo "lean-torch: patchelf not found; skipped" >&2
  exit 0
}
case "$1" in
  make) shift; cmd_make "$@" ;;
  check) [ $# -eq 3 ] || usage; cmd_check "$2" "$3" ;;
  *) usage ;;
esac
