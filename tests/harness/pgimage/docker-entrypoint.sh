#!/bin/sh
# Entrypoint of the local nixmig-test/postgres image: behaves like the official
# postgres image's docker-entrypoint.sh for what nixmig relies on.
#  * POSTGRES_USER (default postgres), POSTGRES_PASSWORD, POSTGRES_DB (default
#    $POSTGRES_USER), POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD; each may be
#    given as VAR_FILE instead (read as root, before dropping privileges).
#  * They only matter when PGDATA is empty: an existing cluster is started as is.
#  * Host connections use password_encryption's method (scram-sha-256); local
#    socket connections are trusted; the server listens on '*'.
#  * /docker-entrypoint-initdb.d/*.sh and *.sql run once, after initdb.
#  * Started as root it prepares PGDATA and re-executes itself as postgres.
set -eu

file_env() {
	var="$1"
	def="${2:-}"
	eval "val=\${$var:-}"
	eval "fileval=\${${var}_FILE:-}"
	if [ -n "$val" ] && [ -n "$fileval" ]; then
		echo "error: both $var and ${var}_FILE are set (but are exclusive)" >&2
		exit 1
	fi
	if [ -n "$fileval" ]; then
		val="$(cat "$fileval")"
	elif [ -z "$val" ]; then
		val="$def"
	fi
	export "$var=$val"
	unset "${var}_FILE"
}

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
	set -- postgres "$@"
fi

if [ "$1" != postgres ]; then
	exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
file_env POSTGRES_PASSWORD
file_env POSTGRES_USER postgres
file_env POSTGRES_DB "$POSTGRES_USER"
file_env POSTGRES_INITDB_ARGS
: "${POSTGRES_HOST_AUTH_METHOD:=}"

if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA"
	chown postgres:postgres "$PGDATA"
	chmod 700 "$PGDATA"
	mkdir -p /var/run/postgresql
	chown postgres:postgres /var/run/postgresql
	chmod 3777 /var/run/postgresql
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		cat >&2 <<-'EOM'
		Error: Database is uninitialized and superuser password is not specified.
		       You must specify POSTGRES_PASSWORD to a non-empty value for the
		       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".
		EOM
		exit 1
	fi
	pwfile="$(mktemp)"
	printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
	# shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of words
	initdb --username="$POSTGRES_USER" --pwfile="$pwfile" $POSTGRES_INITDB_ARGS
	rm -f "$pwfile"
	printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
	shift
	if [ -z "$POSTGRES_HOST_AUTH_METHOD" ]; then
		POSTGRES_HOST_AUTH_METHOD="$(postgres -C password_encryption "$@")"
	fi
	printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"
	set -- postgres "$@"

	# the temporary server gets the same arguments as the real one (shell-quoted for
	# pg_ctl -o), but listens on the socket only
	opts=""
	shift
	for arg in "$@"; do
		quoted=""
		rest="$arg"
		while :; do
			case "$rest" in
				*"'"*) quoted="$quoted${rest%%\'*}'\\''"; rest="${rest#*\'}" ;;
				*) quoted="$quoted$rest"; break ;;
			esac
		done
		opts="$opts '$quoted'"
	done
	set -- postgres "$@"
	export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
	PGUSER="${PGUSER:-$POSTGRES_USER}" \
		pg_ctl -D "$PGDATA" -o "$opts -c listen_addresses='' -p ${PGPORT:-5432}" -w start
	psql_run() {
		psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --no-password \
			-p "${PGPORT:-5432}" "$@"
	}
	if [ "$POSTGRES_DB" != postgres ]; then
		psql_run --dbname postgres --set db="$POSTGRES_DB" <<-'EOSQL'
			CREATE DATABASE :"db" ;
		EOSQL
	fi
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
			*.sh) echo "$0: running $f"; . "$f" ;;
			*.sql) echo "$0: running $f"; psql_run --dbname "$POSTGRES_DB" -f "$f" ;;
			*/\*) ;;
			*) echo "$0: ignoring $f" ;;
		esac
	done
	PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -m fast -w stop
	unset PGPASSWORD
	echo
	echo 'PostgreSQL init process complete; ready for start up.'
	echo
fi

exec "$@"
