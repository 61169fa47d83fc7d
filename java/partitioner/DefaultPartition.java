// DefaultPartition prints, for each input line "<partitions> <hex key>", the
// partition the Java producer's default partitioner picks for that key
// (BuiltInPartitioner.partitionForKey: toPositive(murmur2(key)) % n), so the
// Go tests can check the relay's placement against the Java client itself.
//
// Run with the broker's jars (they include kafka-clients):
//   java -cp 'JARS/*' java/partitioner/DefaultPartition.java < keys
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;

import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;

public class DefaultPartition {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        StringBuilder out = new StringBuilder();
        for (String line; (line = in.readLine()) != null; ) {
            String[] f = line.trim().split(" ", 2);
            int partitions = Integer.parseInt(f[0]);
            byte[] key = f.length > 1 ? HexFormat.of().parseHex(f[1]) : new byte[0];
            out.append(BuiltInPartitioner.partitionForKey(key, partitions)).append('\n');
        }
        System.out.print(out);
    }
}
