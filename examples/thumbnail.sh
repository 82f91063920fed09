#!/bin/sh
# thumbnail.sh SRC SIZE DST - the program of forkpool's exec example
# (thumbnail.json): writes a PNG thumbnail of images/SRC, at most SIZE pixels
# on a side, to thumbs/DST, and prints {"path": ..., "width": W, "height": H}.
#
# Arguments come from clients, so only plain file names are accepted: no
# client can reach outside the two directories, nor use ImageMagick's
# "format:" prefixes (such as ephemeral:, which deletes its file).
set -eu
src=$1 size=$2 dst=$3
for name in "$src" "$dst"; do
	case $name in
	'' | .* | -* | *[!A-Za-z0-9._-]*)
		echo "thumbnail: \"$name\" is not a plain file name ([A-Za-z0-9._-], no leading . or -)" >&2
		exit 2
		;;
	esac
done
[ -f "images/$src" ] || { echo "thumbnail: there is no image \"$src\"" >&2; exit 2; }
mkdir -p thumbs
info=$(convert "images/$src[0]" -thumbnail "${size}x${size}" -write "png:thumbs/$dst" \
	-format '"width":%w,"height":%h' info:)
printf '{"path":"thumbs/%s",%s}\n' "$dst" "$info"
