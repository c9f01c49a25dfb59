#!/usr/bin/env bash
# Keep model_store/ out of the working tree while device calls run, and put it back exactly.
#
# A device call sends the working tree (tracked and untracked-not-ignored files) plus its carry,
# 64 MiB in all; model_store/ is tracked and about 170 MB, so with it nothing travels.
#   shrink   sparse checkout without model_store/ (refused with uncommitted or untracked files
#            there, or when a sparse checkout is already on); records the git config and the
#            index entries of model_store/ first
#   restore  the full checkout back, the git config as it was; checks that model_store/ matches
#            the index again and every installed model's files match its card's sha256
#   status   whether the tree is shrunk, and the bytes a device call would send now
# Usage: bash scripts/gpu/tree.sh shrink|restore|status
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
git_dir=$(git rev-parse --git-dir)
state="$git_dir/bcgpu-shrink"

sparse_on() { [ "$(git config --get core.sparseCheckout || true)" = "true" ]; }

travelling_mib() {
    # what a call sends: listed files present on disk (skip-worktree entries are absent)
    git ls-files -z --cached --others --exclude-standard |
        xargs -0 -r stat -c %s -- 2>/dev/null |
        awk '{ s += $1 } END { printf "%.1f", s / 1048576 }'
}

store_index() { git ls-files -s -- model_store | sha256sum | cut -d' ' -f1; }

verify_cards() {
    python3 - <<'EOF'
import hashlib, json, pathlib, sys
bad = []
for card_path in sorted(pathlib.Path("model_store/models").glob("*/card.json")):
    card = json.loads(card_path.read_text())
    for name, expected in (card.get("files_sha256") or {}).items():
        path = card_path.parent / name
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        if digest != expected:
            bad.append(str(path))
if bad:
    sys.exit("restore: files differ from their card: " + ", ".join(bad))
print("restore: every installed model's files match its card")
EOF
}

case "${1:-}" in
shrink)
    if sparse_on; then
        echo "shrink: refused, a sparse checkout is already on (restore first)" >&2
        exit 1
    fi
    changes=$(git status --porcelain --untracked-files=all -- model_store)
    if [ -n "$changes" ]; then
        echo "shrink: refused, uncommitted or untracked files in model_store/:" >&2
        echo "$changes" >&2
        exit 1
    fi
    mkdir -p "$state"
    cp "$git_dir/config" "$state/config"
    [ -f "$git_dir/config.worktree" ] && cp "$git_dir/config.worktree" "$state/config.worktree"
    [ -f "$git_dir/info/sparse-checkout" ] &&
        cp "$git_dir/info/sparse-checkout" "$state/sparse-checkout"
    store_index >"$state/index.sha256"
    git sparse-checkout set --no-cone '/*' '!/model_store/'
    if git ls-files -t -- model_store | grep -qv '^S'; then
        echo "shrink: some model_store/ files are still checked out; run restore" >&2
        exit 1
    fi
    echo "shrink: model_store/ left out; a device call now sends $(travelling_mib) MiB" \
        "(restore with: bash scripts/gpu/tree.sh restore)"
    ;;
restore)
    if ! sparse_on && [ ! -d "$state" ]; then
        echo "restore: not shrunk, nothing to do"
        verify_cards
        exit 0
    fi
    git sparse-checkout disable
    if [ -d "$state" ]; then
        cp "$state/config" "$git_dir/config"
        for f in config.worktree:config.worktree sparse-checkout:info/sparse-checkout; do
            saved=${f%%:*} live=${f#*:}
            if [ -f "$state/$saved" ]; then cp "$state/$saved" "$git_dir/$live"; else rm -f "$git_dir/$live"; fi
        done
    fi
    if git ls-files -t -- model_store | grep -q '^S'; then
        echo "restore: model_store/ entries still marked skip-worktree" >&2
        exit 1
    fi
    if [ -n "$(git status --porcelain --untracked-files=no -- model_store)" ]; then
        echo "restore: model_store/ differs from the index:" >&2
        git status --short -- model_store >&2
        exit 1
    fi
    if [ -f "$state/index.sha256" ] && [ "$(store_index)" != "$(cat "$state/index.sha256")" ]; then
        echo "restore: note: model_store/'s index entries changed since shrink (a commit?)" >&2
    fi
    verify_cards
    rm -rf "$state"
    echo "restore: model_store/ back; a device call would send $(travelling_mib) MiB"
    ;;
status)
    if sparse_on; then echo "shrunk (sparse checkout on)"; else echo "full checkout"; fi
    echo "a device call sends $(travelling_mib) MiB of working tree, plus its carry"
    ;;
*)
    echo "usage: bash scripts/gpu/tree.sh shrink|restore|status" >&2
    exit 2
    ;;
esac
