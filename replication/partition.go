package replication

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/outbox-relay/outbox-relay/outbox"
)

// IsPartitioned reports whether table is a partitioned table (the root of
// its partitions).
func IsPartitioned(ctx context.Context, conn *pgx.Conn, table outbox.Table) (bool, error) {
	var partitioned bool
	err := conn.QueryRow(ctx, "SELECT relkind = 'p' FROM pg_class WHERE oid = $1::regclass", table.Quoted()).Scan(&partitioned)
	if err != nil {
		return false, fmt.Errorf("read the kind of table %s: %w", table, err)
	}
	return partitioned, nil
}

// PartitionKey returns the column table is partitioned by when it is a
// partitioned table whose partition key is one plain column (PARTITION BY
// RANGE (created_at)); ok is false for any other table or key (several
// columns, an expression).
func PartitionKey(ctx context.Context, conn *pgx.Conn, table outbox.Table) (col Column, ok bool, err error) {
	var names, types []string
	err = conn.QueryRow(ctx, `
		SELECT coalesce(array_agg(coalesce(a.attname::text, '') ORDER BY k.n), '{}'),
		       coalesce(array_agg(coalesce(format_type(a.atttypid, a.atttypmod), '') ORDER BY k.n), '{}')
		FROM pg_partitioned_table p, unnest(p.partattrs::int2[]) WITH ORDINALITY AS k(attnum, n)
		LEFT JOIN pg_attribute a ON a.attrelid = $1::regclass AND a.attnum = k.attnum
		WHERE p.partrelid = $1::regclass`, table.Quoted()).Scan(&names, &types)
	if err != nil {
		return Column{}, false, fmt.Errorf("read the partition key of %s: %w", table, err)
	}
	if len(names) != 1 || names[0] == "" {
		return Column{}, false, nil
	}
	return Column{Name: names[0], Type: types[0]}, true, nil
}
