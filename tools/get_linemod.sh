#!/usr/bin/env bash
# Download and unpack the real data of SingleShotPose (design §3.4), from the original READMEs:
#   linemod       the preprocessed LINEMOD archive -> LINEMOD/<obj>/{JPEGImages,labels,mask,...}
#   backup        the trained YOLOv2 pose models (MS) -> backup/<obj>/model_backup.weights
#   backup_multi  the multi-object (OCCLUSION) model -> multi_obj_pose_estimation/backup_multi/
#   voc           VOC2012, the training background pool -> VOCdevkit/VOC2012/JPEGImages
#   darknet19     the ImageNet initialisation of yolo-pose.cfg -> cfg/darknet19_448.conv.23
#
# Usage: tools/get_linemod.sh [--root DIR] [--only STEP,STEP,...] [--dry-run] [--keep-archives]
#                             [--linemod-url URL] [--backup-url URL] [--backup_multi-url URL]
#                             [--voc-url URL] [--darknet19-url URL] [-h|--help]
#   --root DIR       where to put everything (default: the current directory = the repository root)
#   --only STEPS     comma-separated subset of: linemod,backup,backup_multi,voc,darknet19
#                    (default: linemod,backup,voc,darknet19; backup_multi only when asked for)
#   --dry-run        print the plan (addresses, targets, free space, checks); no network, no writes
#   --keep-archives  keep downloads/<step>.tar after unpacking
#   --<step>-url     another address for that step (its checksum is then not checked)
#
# Each step: skip if already done (marker <root>/.done_<step>); check the free space (archive +
# unpacked size, or GET_LINEMOD_NEED_BYTES bytes if set); download with resume (curl -C -, else
# wget -c) to <root>/downloads/<step>.part; refuse an HTML page (a dead share link); check the
# MD5 or size where known; unpack (tar archives) or move (single files) into place.
# Exit status: 0 done, 2 bad usage / not enough space / download or check failed.
set -euo pipefail

STEPS_ALL="linemod backup backup_multi voc darknet19"
DEFAULT_ONLY="linemod,backup,voc,darknet19"

# Addresses from the original READMEs (OneDrive share links may have been retired since).
URL_linemod="https://onedrive.live.com/download?cid=05750EBEE1537631&resid=5750EBEE1537631%21135&authkey=AJRHFmZbcjXxTmI"
URL_backup="https://onedrive.live.com/download?cid=0C78B7DE6C569D7B&resid=C78B7DE6C569D7B%21191&authkey=AP183o4PlczZR78"
URL_backup_multi="https://onedrive.live.com/download?cid=05750EBEE1537631&resid=5750EBEE1537631%21136&authkey=AFQv01OSbvhGnoM"
URL_voc="https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar"
URL_darknet19="https://pjreddie.com/media/files/darknet19_448.conv.23"

# Known checksums / sizes ("" = unknown, not checked)
MD5_linemod="" MD5_backup="" MD5_backup_multi="" MD5_darknet19=""
MD5_voc="6cd6e144f989b92b3379bac3b3de84fd"
SIZE_darknet19=79327120   # bytes: 16-byte header + 19,831,776 float32 (design §2.4)

# Space needed (archive + unpacked), in GB, rounded up; only for the free-space check
NEED_GB_linemod=12 NEED_GB_backup=6 NEED_GB_backup_multi=1 NEED_GB_voc=5 NEED_GB_darknet19=1

# Where each step unpacks (relative to --root), and a path that shows it worked
DEST_linemod="." DEST_backup="." DEST_backup_multi="multi_obj_pose_estimation" DEST_voc="." DEST_darknet19="cfg"
EXPECT_linemod="LINEMOD" EXPECT_backup="backup" EXPECT_backup_multi="multi_obj_pose_estimation/backup_multi"
EXPECT_voc="VOCdevkit/VOC2012/JPEGImages" EXPECT_darknet19="cfg/darknet19_448.conv.23"
FILE_darknet19="darknet19_448.conv.23"   # a single file, not an archive

ROOT="."
ONLY="$DEFAULT_ONLY"
DRY_RUN=0
KEEP=0

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "get_linemod: error: $*" >&2; exit 2; }
get() { local v="$1_$2"; echo "${!v-}"; }   # get URL linemod -> $URL_linemod

while [[ $# -gt 0 ]]; do
    case "$1" in
        --root) [[ $# -ge 2 ]] || die "--root needs a value"; ROOT="$2"; shift 2 ;;
        --only) [[ $# -ge 2 ]] || die "--only needs a value"; ONLY="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --keep-archives) KEEP=1; shift ;;
        --*-url)
            s="${1#--}"; s="${s%-url}"; s="${s//-/_}"
            [[ " $STEPS_ALL " == *" $s "* ]] || die "unknown option '$1' (see --help)"
            [[ $# -ge 2 ]] || die "$1 needs a value"
            printf -v "URL_$s" '%s' "$2"; printf -v "MD5_$s" '%s' ""; printf -v "SIZE_$s" '%s' ""
            shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

IFS=',' read -r -a STEPS <<< "$ONLY"
[[ ${#STEPS[@]} -gt 0 ]] || die "--only: no step given (expected some of: $STEPS_ALL)"
for s in "${STEPS[@]}"; do
    [[ " $STEPS_ALL " == *" $s "* ]] || die "--only: unknown step '$s' (expected some of: $STEPS_ALL)"
done
if [[ -n "${GET_LINEMOD_NEED_BYTES:-}" && ! "$GET_LINEMOD_NEED_BYTES" =~ ^[0-9]+$ ]]; then
    die "GET_LINEMOD_NEED_BYTES must be a whole number of bytes; got '$GET_LINEMOD_NEED_BYTES'"
fi

free_bytes() {  # free bytes on the file system holding $1 (or its nearest existing parent)
    local d="$1"
    while [[ ! -d "$d" ]]; do d="$(dirname "$d")"; done
    df -Pk "$d" | awk 'NR == 2 { printf "%.0f\n", $4 * 1024 }'
}

need_bytes() { echo "${GET_LINEMOD_NEED_BYTES:-$(( $(get NEED_GB "$1") * 1024 * 1024 * 1024 ))}"; }

download() {  # url dest: resumable download into dest
    local url="$1" dest="$2"
    if command -v curl >/dev/null 2>&1; then
        curl -L --fail --retry 3 -C - -o "$dest" "$url" || die "download failed: $url (partial file kept: $dest; run again to resume)"
    elif command -v wget >/dev/null 2>&1; then
        wget -c -O "$dest" "$url" || die "download failed: $url (partial file kept: $dest; run again to resume)"
    else
        die "neither curl nor wget is installed"
    fi
}

check_file() {  # step file: not a web page, md5 / size where known
    local s="$1" f="$2" md5 size got start
    start="$(head -c 512 "$f" | LC_ALL=C tr -d '\000' | LC_ALL=C tr 'A-Z' 'a-z')"
    if [[ "$start" == *"<!doctype html"* || "$start" == *"<html"* ]]; then
        die "$f: the server sent a web page, not the $s data (the share link may be dead); delete it and pass --$s-url URL"
    fi
    md5="$(get MD5 "$s")"; size="$(get SIZE "$s")"
    if [[ -n "$size" ]]; then
        got="$(wc -c < "$f" | tr -d ' ')"
        [[ "$got" == "$size" ]] || die "$f: $got bytes, expected $size (delete it to download again)"
    fi
    if [[ -n "$md5" ]]; then
        if command -v md5sum >/dev/null 2>&1; then got="$(md5sum "$f" | cut -d' ' -f1)"; else got="$(md5 -q "$f")"; fi
        [[ "$got" == "$md5" ]] || die "$f: md5 $got, expected $md5 (delete it to download again)"
    fi
}

step() {
    local s="$1" url md5 size need have marker part dest
    url="$(get URL "$s")"; md5="$(get MD5 "$s")"; size="$(get SIZE "$s")"
    marker="$ROOT/.done_$s"; part="$ROOT/downloads/$s.part"; dest="$ROOT/$(get DEST "$s")"; dest="${dest%/.}"
    echo "== $s: $url"
    echo "   into $dest (expect $ROOT/$(get EXPECT "$s"))"
    echo "   check: ${md5:+md5 $md5 }${size:+size $size bytes}$([[ -z "$md5$size" ]] && echo "none known")"
    if [[ -e "$marker" ]]; then
        echo "   skip: already done ($marker)"
        return 0
    fi
    need="$(need_bytes "$s")"; have="$(free_bytes "$ROOT")"
    if [[ -e "$part" ]]; then echo "   resuming $part ($(wc -c < "$part" | tr -d ' ') bytes so far)"; fi
    echo "   free space: $have bytes, need about $need"
    if [[ "$have" -lt "$need" ]]; then
        [[ $DRY_RUN -eq 1 ]] && { echo "   would refuse: not enough free space"; return 0; }
        die "not enough free space in $ROOT for $s: $have bytes free, about $need needed (set GET_LINEMOD_NEED_BYTES to override)"
    fi
    if [[ $DRY_RUN -eq 1 ]]; then
        echo "   would download to $part, check it, then $( [[ -n "$(get FILE "$s")" ]] && echo "move it to $dest/$(get FILE "$s")" || echo "tar -xf it in $dest")"
        return 0
    fi
    mkdir -p "$ROOT/downloads" "$dest"
    download "$url" "$part"
    check_file "$s" "$part"
    if [[ -n "$(get FILE "$s")" ]]; then
        mv "$part" "$dest/$(get FILE "$s")"
    else
        tar -xf "$part" -C "$dest" || die "$part: cannot unpack (corrupt or not a tar archive; delete it to download again)"
        if [[ $KEEP -eq 1 ]]; then mv "$part" "$ROOT/downloads/$s.tar"; else rm -f "$part"; fi
    fi
    [[ -e "$ROOT/$(get EXPECT "$s")" ]] || echo "   warning: $ROOT/$(get EXPECT "$s") not found after unpacking; the archive layout differs from the README's"
    touch "$marker"
    echo "   done"
}

[[ $DRY_RUN -eq 1 ]] && echo "dry run: nothing is downloaded or written"
echo "root: $ROOT; steps: ${STEPS[*]}"
if [[ $DRY_RUN -eq 0 ]]; then mkdir -p "$ROOT"; fi
for s in "${STEPS[@]}"; do step "$s"; done
if [[ $DRY_RUN -eq 1 ]]; then echo "dry run finished"; else echo "all done"; fi
