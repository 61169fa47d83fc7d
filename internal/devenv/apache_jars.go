package devenv

import "context"

// JarsEnv names a directory of Kafka runtime jars to use instead of the
// cached Maven download (for machines without Maven or network).
const JarsEnv = "OUTBOX_RELAY_KAFKA_JARS"

// kafkaJars are the Apache Kafka broker's runtime jars: the broker,
// kafka-clients and a log4j2 binding.
var kafkaJars = jarSet{
	name:            "kafka",
	pom:             "java/kafka/pom.xml",
	versionProperty: "kafka.version",
	env:             JarsEnv,
	marker:          "kafka_2.13-*.jar",
}

// ApacheKafkaJars returns a directory holding the runtime jars of the Apache
// Kafka broker named in java/kafka/pom.xml (the broker, kafka-clients and a
// log4j2 binding), for `java -cp 'dir/*'`. The first call copies them with
// Maven into the user's cache directory ($XDG_CACHE_HOME or ~/.cache, under
// outbox-relay/kafka-<version>-<pom hash>); later calls, in this process or
// any other, find them there and run nothing. $OUTBOX_RELAY_KAFKA_JARS, when
// set, is used as is.
func ApacheKafkaJars(ctx context.Context) (dir string, err error) {
	return kafkaJars.dir(ctx)
}

// JavaAvailable says why the real-broker tools cannot run here (nil when
// java and either mvn or $OUTBOX_RELAY_KAFKA_JARS are present).
func JavaAvailable() error {
	return kafkaJars.available()
}
