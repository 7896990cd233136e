# Sourced by scripts that build into the shared target dir (test.sh, dev.sh).
#
#   same_checkout ROOT
#
# Two checkouts sharing one target dir (a CI clone and a working copy) confuse cargo: it keeps
# source paths relative to the package, so a binary built in the other checkout looks fresh
# when its sources are older, yet its `env!("CARGO_MANIFEST_DIR")` still names the other tree
# (a fixture then reads a file that is not there). On a switch, flowgate itself is rebuilt.
same_checkout() {
  local root=$1 stamp=$CARGO_TARGET_DIR/flowgate-checkout
  if [[ -f $stamp && $(<"$stamp") != "$root" ]]; then
    printf 'the target dir was last built from %s: rebuilding flowgate'"'"'s own crates\n' "$(<"$stamp")" >&2
    cargo clean --locked -p flowgate
  fi
  mkdir -p "$CARGO_TARGET_DIR"
  printf '%s\n' "$root" >"$stamp"
}

#   use_env SCRIPT...
#
# Exports what `SCRIPT env` prints; fails if it fails (`eval "$(…)"` would eval nothing and
# succeed).
use_env() {
  local vars
  vars=$("$@" env) || return
  eval "$vars"
}
